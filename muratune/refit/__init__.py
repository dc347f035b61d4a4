"""Refit: the top configurations of a search retrained on patient-grouped folds; out-of-fold ensembles."""
