"""The trial: model factory, training loop, metrics and checkpoints."""
