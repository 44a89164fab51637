"""Training: time split, evaluation, gates (the model flavors are ``mlcycle.flavors``, a leaf shared
with the registry and serving)."""
