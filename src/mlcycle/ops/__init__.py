"""Operations: the local stack supervisor, the service process, the scale profile's settings."""
