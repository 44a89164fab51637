"""Event streaming on a real broker: Redis Streams with consumer groups and acknowledgements."""
