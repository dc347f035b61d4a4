"""muratune: Ray Tune + Optuna + ASHA hyperparameter search for MURA abnormality detection."""

__version__ = "0.1.0"
