"""Scoring ensembles and single trials: tuned thresholds, study predictions beside the truth, test metrics."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from muratune.constants import BODY_PART, LABEL, PRED, PROB, PROB_UNCALIBRATED, STUDY_PATH
from muratune.ensemble.inputs import Candidate
from muratune.ensemble.predictor import aggregate
from muratune.fileio import atomic_path
from muratune.layout import TRIALS_TEST_DIR, TRIALS_TEST_METRICS
from muratune.metrics import calibration_metrics, defined_or_none, study_metrics, tune_threshold
from muratune.schemas import CalibrationSpec

TEST_SCORE_KEYS = (
    "test_kappa",
    "test_auc",
    "test_accuracy",
    "test_ece",
    "test_brier",
)  # the test metrics ``ensemble.json`` repeats


def tuned_thresholds(studies: pd.DataFrame, probs: np.ndarray) -> dict[str, float]:
    """Per-body-part thresholds maximising study kappa (on internal val, or on out-of-fold predictions)."""
    parts = studies[BODY_PART].to_numpy()
    labels = studies[LABEL].to_numpy(dtype=int)
    return {str(part): tune_threshold(labels[parts == part], probs[parts == part]) for part in sorted(set(parts))}


def scored_studies(
    images: pd.DataFrame,
    probs: np.ndarray,
    thresholds: dict[str, float],
    calibration: CalibrationSpec | None = None,
) -> pd.DataFrame:
    """Study predictions beside the true labels: ``study_path, body_part, label, prob, pred, threshold, n_views``.

    With a calibration, ``prob`` is calibrated (``thresholds`` are in its space) and ``prob_uncalibrated`` follows.
    """
    studies = aggregate(images, probs, thresholds, calibration).rename(columns={LABEL: PRED})
    truth = images.groupby(STUDY_PATH, sort=False)[LABEL].first()
    studies.insert(2, LABEL, studies[STUDY_PATH].map(truth).astype(int))
    if calibration is not None:
        studies.insert(4, PROB_UNCALIBRATED, aggregate(images, probs, {})[PROB].to_numpy())
    return studies


def test_metrics(studies: pd.DataFrame, thresholds: dict[str, float]) -> dict[str, float]:
    """Study metrics on the test split with the thresholds applied (unpredictable studies count as wrong).

    ECE and Brier score (``test_ece``, ``test_brier``) are of the predicted studies; with a ``prob_uncalibrated``
    column also ``test_ece_uncalibrated`` and ``test_brier_uncalibrated``.
    """
    frame = studies.copy()
    missing = frame[PROB].isna()
    frame.loc[missing, PROB] = 1.0 - frame.loc[missing, LABEL]  # an unreadable study is scored as a miss
    metrics = study_metrics(frame, prefix="test", thresholds=thresholds) | calibration_metrics(studies, "test")
    if PROB_UNCALIBRATED in studies:
        raw = studies.assign(**{PROB: studies[PROB_UNCALIBRATED]})
        metrics |= calibration_metrics(raw, "test", suffix="_uncalibrated")
    return metrics


def test_score(metrics: dict[str, float]) -> dict[str, float | None]:
    """The ``test_score`` of ``ensemble.json``: test kappa, AUC and accuracy (undefined ones as null)."""
    return defined_or_none({key: metrics[key] for key in TEST_SCORE_KEYS})


def write_trials_test(
    exp_dir: Path, candidates: Sequence[Candidate], test: pd.DataFrame, probs: np.ndarray, tta: bool
) -> pd.DataFrame:
    """Score every candidate alone on the test split: ``trials_test/<trial_id>.parquet`` and ``metrics.csv``."""
    folder = exp_dir / TRIALS_TEST_DIR
    rows = []
    for j, cand in enumerate(candidates):
        studies = scored_studies(test, probs[:, j], {})
        with atomic_path(folder / f"{cand.trial_id}.parquet") as tmp:
            studies.to_parquet(tmp, index=False)
        rows.append(
            {"trial_id": cand.trial_id, "checkpoint": str(cand.checkpoint), "tta": tta, **test_metrics(studies, {})}
        )
    table = pd.DataFrame(rows)
    with atomic_path(folder / TRIALS_TEST_METRICS) as tmp:
        table.to_csv(tmp, index=False)
    return table
