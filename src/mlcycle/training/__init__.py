"""Training: time split, model flavors, evaluation, gates."""
