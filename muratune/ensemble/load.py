"""Loading a predictor: an ensemble folder, or one checkpoint folder as a one-member ensemble."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from muratune.ensemble.predictor import StudyPredictor
from muratune.ensemble.trained import load_trained_model
from muratune.errors import UserError
from muratune.layout import DEFAULT_PREDICTOR, ENSEMBLE_DIR, ENSEMBLE_FILE, MODEL_FILE, TRIAL_FILE
from muratune.schemas import GLOBAL_WEIGHTS, read_default_choice


def default_predictor(path: str | os.PathLike) -> Path:
    """The folder a predictor is loaded from: an experiment folder with ``ensemble/default.json`` (written by
    ``muratune refit``) stands for its default predictor; any other folder for itself.

    Raises:
        UserError: the default names a folder outside the experiment.
    """
    path = Path(path)
    pointer = path / ENSEMBLE_DIR / DEFAULT_PREDICTOR
    if (path / ENSEMBLE_FILE).is_file() or not pointer.is_file():
        return path
    chosen = (path / read_default_choice(pointer).path).resolve()
    if not chosen.is_relative_to(path.resolve()):
        raise UserError(f"{pointer}: path: {chosen} lies outside the experiment {path}")
    return chosen


def load_ensemble(path: str | os.PathLike, device: str | None = None) -> StudyPredictor:
    """An ensemble folder, one checkpoint folder as a one-member ensemble (thresholds 0.5, no TTA), or an experiment
    folder's default predictor (`default_predictor`).

    Raises:
        UserError: the folder holds neither ``ensemble.json`` nor ``trial.json`` + ``model.safetensors``.
    """
    path = default_predictor(path)
    if (path / ENSEMBLE_FILE).is_file():
        return StudyPredictor.load(path, device=device)
    if (path / TRIAL_FILE).is_file() and (path / MODEL_FILE).is_file():
        return StudyPredictor([load_trained_model(path)], {GLOBAL_WEIGHTS: np.ones(1)}, device=device)
    raise UserError(
        f"{path}: not an ensemble folder ({ENSEMBLE_FILE}) nor a checkpoint ({TRIAL_FILE} + {MODEL_FILE}); "
        "build one with `muratune ensemble EXPERIMENT`"
    )
