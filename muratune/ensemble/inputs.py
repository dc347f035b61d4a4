"""What ensembles are selected and scored on: the candidates, their internal-val predictions, the test split."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from muratune.config import ExperimentConfig
from muratune.constants import BODY_PART, SPLIT, SPLIT_VALID
from muratune.data.cache import ImageCache
from muratune.ensemble.select import align_image_predictions
from muratune.ensemble.trained import TrainedModel
from muratune.errors import UserError
from muratune.layout import MODEL_FILE, SUMMARY_CSV, VAL_IMAGES_FILE, checkpoint_in_experiment
from muratune.search.summary import read_search_summary


@dataclass
class Candidate:
    """One non-failed trial's best checkpoint (by internal-val kappa)."""

    trial_id: str
    checkpoint: Path

    @property
    def name(self) -> str:
        """TrainedModel name, also its folder name in an ensemble: ``trial_<id>``."""
        return f"trial_{self.trial_id}"


def read_candidates(exp_dir: Path) -> list[Candidate]:
    """Candidates from ``search_summary.csv``: every trial not FAILed that has a best checkpoint on disk."""
    summary_path = exp_dir / SUMMARY_CSV
    summary = read_search_summary(summary_path, f"run `muratune search` first (is {exp_dir} an experiment?)")
    candidates = []
    for row in summary.itertuples():
        if row.state == "FAIL" or not isinstance(row.checkpoint, str) or not row.checkpoint:
            continue
        path = checkpoint_in_experiment(exp_dir, row.checkpoint)
        if path is None or not (path / MODEL_FILE).is_file():
            raise UserError(f"{row.checkpoint}: checkpoint of trial {row.trial_id} not found in {exp_dir}")
        candidates.append(Candidate(str(row.trial_id), path))
    if not candidates:
        raise UserError(f"{summary_path}: no trial with a checkpoint to ensemble (all failed?)")
    return candidates


def open_caches(index: pd.DataFrame, models: Sequence[TrainedModel], config: ExperimentConfig) -> list[ImageCache]:
    """Open (building if needed) the image cache at each model's input size and resize mode."""
    from muratune.data.cache import build_cache

    keys = sorted({(m.image_size, str(m.data_config["resize_mode"])) for m in models})
    return [
        build_cache(index, size, mode, cache_dir=config.data.cache_dir, skip_bad_images=True, progress=False)
        for size, mode in keys
    ]


def val_predictions(candidates: Sequence[Candidate]) -> tuple[pd.DataFrame, np.ndarray]:
    """Image rows and ``n_images x n_candidates`` internal-val probabilities saved with the checkpoints."""
    frames = []
    for cand in candidates:
        path = cand.checkpoint / VAL_IMAGES_FILE
        if not path.is_file():
            raise UserError(f"{path}: internal-validation predictions of trial {cand.trial_id} not found")
        frames.append(pd.read_parquet(path))
    return align_image_predictions(frames, [c.name for c in candidates])


def test_frame(index: pd.DataFrame, config: ExperimentConfig) -> pd.DataFrame:
    """The held-out test split (the official valid split), restricted to the experiment's body parts."""
    test = index[index[SPLIT] == SPLIT_VALID]
    if config.data.body_parts:
        test = test[test[BODY_PART].isin(config.data.body_parts)]
    if test.empty:
        raise UserError(f"{config.data.root}: the test split (official {SPLIT_VALID}) has no images")
    return test.reset_index(drop=True)
