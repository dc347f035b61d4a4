"""Ray Tune + Optuna + ASHA search: config space, tuner, Optuna bookkeeping."""
