"""Serving: the scorer, its request schema, rollout policy and canary analysis, the prediction log,
batch scoring and replay."""
