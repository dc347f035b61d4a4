"""Out-of-fold predictions: each configuration's fold models on their own held-out folds, covering the train split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from muratune.config import ExperimentConfig
from muratune.constants import BODY_PART, IMAGE_PATH, SPLIT, SPLIT_TRAIN, STUDY_PATH
from muratune.data.split import FOLD
from muratune.ensemble.select import ValPredictions, align_image_predictions, study_matrix
from muratune.errors import UserError
from muratune.fileio import atomic_path
from muratune.layout import MODEL_FILE, OOF_IMAGES, VAL_IMAGES_FILE

CONFIGURATION = "configuration"


@dataclass
class OutOfFold:
    """The configurations' out-of-fold image probabilities, aligned on the same train images.

    Attributes:
        images: one row per train image (``image_path``, ``study_path``, ``body_part``, ``label``, ``fold``).
        probs: ``n_images x n_configurations`` probabilities, each from the fold model that did not train on it.
        names: the configurations (search trial ids), one per column of ``probs``.
    """

    images: pd.DataFrame
    probs: np.ndarray
    names: list[str]

    def studies(self) -> ValPredictions:
        """Study-level predictions (mean of views) for ensemble selection and threshold tuning."""
        studies, probs = study_matrix(self.images, self.probs)
        return ValPredictions(studies, probs, list(self.names))


def fold_checkpoints(summary: pd.DataFrame, configurations: list[str], folds: int) -> dict[tuple[str, int], Path]:
    """Each (configuration, fold)'s fold-model checkpoint; refuses unfinished folds and missing files."""
    found = {}
    for name in configurations:
        for fold in range(folds):
            rows = summary[(summary[CONFIGURATION] == name) & (summary[FOLD] == fold)]
            if len(rows) != 1 or rows["state"].iloc[0] != "COMPLETE":
                raise UserError(f"configuration {name}, fold {fold}: not trained to the end; rerun with --resume")
            path = Path(str(rows["checkpoint"].iloc[0]))
            if not (path / VAL_IMAGES_FILE).is_file() or not (path / MODEL_FILE).is_file():
                raise UserError(f"{path}: fold model or its out-of-fold predictions not found")
            found[(name, fold)] = path
    return found


def expected_images(config: ExperimentConfig, folds: int, split_seed: int) -> pd.DataFrame:
    """The train images that need an out-of-fold prediction, with their fold: readable ones of the body parts."""
    from muratune.data.cache import build_cache
    from muratune.data.index import load_index
    from muratune.data.split import patient_folds

    index = load_index(config.data.root)  # type: ignore[arg-type]
    frame = patient_folds(index, folds, split_seed)
    train = frame[frame[SPLIT] == SPLIT_TRAIN]
    if config.data.body_parts:
        train = train[train[BODY_PART].isin(config.data.body_parts)]
    data = config.data
    cache = build_cache(index, data.image_size, data.resize_mode, cache_dir=data.cache_dir, skip_bad_images=True)
    readable = cache.rows_for(train[IMAGE_PATH]) >= 0
    return train.loc[readable, [IMAGE_PATH, STUDY_PATH, FOLD]].reset_index(drop=True)


def configuration_oof(name: str, checkpoints: dict[tuple[str, int], Path], folds: int) -> pd.DataFrame:
    """One configuration's out-of-fold image predictions: its fold models' val predictions, with their fold."""
    frames = []
    for fold in range(folds):
        path = checkpoints[(name, fold)] / VAL_IMAGES_FILE
        frames.append(pd.read_parquet(path).assign(**{FOLD: fold, CONFIGURATION: name}))
    return pd.concat(frames, ignore_index=True)


def check_coverage(frame: pd.DataFrame, expected: pd.DataFrame, name: str) -> None:
    """Every expected train image exactly once, predicted by the model of its own held-out fold."""
    repeated = frame[IMAGE_PATH].duplicated()
    if repeated.any():
        raise UserError(f"configuration {name}: {int(repeated.sum())} image(s) predicted by more than one fold model")
    fold_of = expected.set_index(IMAGE_PATH)[FOLD]
    missing = ~fold_of.index.isin(frame[IMAGE_PATH])
    extra = ~frame[IMAGE_PATH].isin(fold_of.index)
    if missing.any() or extra.any():
        raise UserError(
            f"configuration {name}: out-of-fold predictions miss {int(missing.sum())} and add {int(extra.sum())} "
            "train image(s); the dataset changed since the refit (rerun it with --overwrite)"
        )
    wrong = frame[FOLD].to_numpy() != frame[IMAGE_PATH].map(fold_of).to_numpy()
    if wrong.any():
        raise UserError(f"configuration {name}: {int(wrong.sum())} image(s) predicted outside their held-out fold")


def assemble_oof(
    refit_dir: Path, config: ExperimentConfig, configurations: list[str], folds: int, split_seed: int, summary
) -> OutOfFold:
    """Collect, check and save (``oof_images.parquet``) the out-of-fold predictions of every configuration.

    Raises:
        UserError: a fold is unfinished, or some train image lacks exactly one out-of-fold prediction.
    """
    checkpoints = fold_checkpoints(summary, configurations, folds)
    expected = expected_images(config, folds, split_seed)
    frames = []
    for name in configurations:
        frame = configuration_oof(name, checkpoints, folds)
        check_coverage(frame, expected, name)
        frames.append(frame)
    with atomic_path(refit_dir / OOF_IMAGES) as tmp:
        pd.concat(frames, ignore_index=True).to_parquet(tmp, index=False)
    images, probs = align_image_predictions(frames, configurations)
    images[FOLD] = images[IMAGE_PATH].map(expected.set_index(IMAGE_PATH)[FOLD]).astype(int)
    return OutOfFold(images, probs, list(configurations))
