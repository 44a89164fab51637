"""The registry: aliases and the promotion log, MLflow runs with lineage, model cards."""
