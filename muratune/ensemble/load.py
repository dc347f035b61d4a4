"""Loading a predictor: an ensemble folder, or one checkpoint folder as a one-member ensemble."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from muratune.ensemble.predictor import StudyPredictor
from muratune.ensemble.trained import load_trained_model
from muratune.errors import UserError
from muratune.layout import ENSEMBLE_FILE, MODEL_FILE, TRIAL_FILE
from muratune.schemas import GLOBAL_WEIGHTS


def load_ensemble(path: str | os.PathLike, device: str | None = None) -> StudyPredictor:
    """An ensemble folder, or one checkpoint folder as a one-member ensemble (thresholds 0.5, no TTA).

    Raises:
        UserError: the folder holds neither ``ensemble.json`` nor ``trial.json`` + ``model.safetensors``.
    """
    path = Path(path)
    if (path / ENSEMBLE_FILE).is_file():
        return StudyPredictor.load(path, device=device)
    if (path / TRIAL_FILE).is_file() and (path / MODEL_FILE).is_file():
        return StudyPredictor([load_trained_model(path)], {GLOBAL_WEIGHTS: np.ones(1)}, device=device)
    raise UserError(
        f"{path}: not an ensemble folder ({ENSEMBLE_FILE}) nor a checkpoint ({TRIAL_FILE} + {MODEL_FILE}); "
        "build one with `muratune ensemble EXPERIMENT`"
    )
