"""Score study predictions per body part and overall: kappa with bootstrap CIs, AUC, sensitivity, specificity."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from muratune.constants import BODY_PART, BODY_PARTS, LABEL, PRED, PROB, STUDY_PATH, THRESHOLD, short_part
from muratune.metrics import binary_metrics
from muratune.report.bootstrap import (
    DEFAULT_LEVEL,
    DEFAULT_REPLICATES,
    percentile_interval,
    replicate_kappas,
    resample_counts,
)

OVERALL = "overall"
SCORE_COLUMNS = (
    "n",
    "positives",
    "kappa",
    "kappa_low",
    "kappa_high",
    "auc",
    "sensitivity",
    "specificity",
    "accuracy",
    "tp",
    "fp",
    "fn",
    "tn",
)


def decided(studies: pd.DataFrame) -> pd.DataFrame:
    """Study rows with a 0/1 ``pred`` for every study, sorted by ``study_path``.

    Sorting makes the bootstrap draw independent of row order (trailing slashes are ignored).
    ``pred`` is taken as given when present, else ``prob >= threshold`` (column ``threshold``, default 0.5).
    A study without a prediction (no readable view: ``pred`` and ``prob`` missing) is scored as a miss
    (``pred = 1 - label``, ``prob = 1 - label``), as the ensemble stage does.
    """
    frame = studies.copy()
    if PRED in frame:
        pred = pd.to_numeric(frame[PRED], errors="coerce")
    else:
        cut = frame[THRESHOLD] if THRESHOLD in frame else 0.5
        pred = (frame[PROB] >= cut).astype(float).where(frame[PROB].notna())
    missing = pred.isna()
    frame[PRED] = pred.where(~missing, 1 - frame[LABEL]).astype(int)
    if PROB in frame:  # a confident miss too, so AUC stays defined (as in the ensemble stage's test_metrics.json)
        frame[PROB] = frame[PROB].where(frame[PROB].notna(), 1.0 - frame[LABEL])
    frame[LABEL] = frame[LABEL].astype(int)
    order = frame[STUDY_PATH].astype(str).str.rstrip("/").argsort(kind="stable")
    return frame.iloc[order].reset_index(drop=True)


def part_order(parts: pd.Series) -> list[str]:
    """Body parts present, MURA's order first, then any others alphabetically."""
    present = set(parts)
    return [p for p in BODY_PARTS if p in present] + sorted(present - set(BODY_PARTS))


def _row(labels: np.ndarray, preds: np.ndarray, probs: np.ndarray | None, kappas: np.ndarray, level: float) -> dict:
    metrics = binary_metrics(labels, preds.astype(float), threshold=0.5)
    if probs is None or np.isnan(probs).any():
        metrics["auc"] = math.nan
    else:
        metrics["auc"] = binary_metrics(labels, probs)["auc"]
    low, high = percentile_interval(kappas, level)
    tp = int(np.sum((labels == 1) & (preds == 1)))
    fp = int(np.sum((labels == 0) & (preds == 1)))
    fn = int(np.sum((labels == 1) & (preds == 0)))
    return {
        "n": len(labels),
        "positives": int(labels.sum()),
        "kappa": metrics["kappa"],
        "kappa_low": low,
        "kappa_high": high,
        "auc": metrics["auc"],
        "sensitivity": metrics["sensitivity"],
        "specificity": metrics["specificity"],
        "accuracy": metrics["accuracy"],
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": len(labels) - tp - fp - fn,
    }


def score_studies(
    studies: pd.DataFrame,
    replicates: int = DEFAULT_REPLICATES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> pd.DataFrame:
    """Per-body-part and overall metrics of study predictions, with stratified-bootstrap kappa CIs.

    Args:
        studies: one row per study with ``study_path``, ``body_part``, ``label`` and ``pred`` and/or ``prob``.
        replicates: bootstrap replicates (studies resampled within each body part).
        seed: random seed. Rows are sorted by study path first, so the same predictions give the same CIs
            whatever their order.
        level: confidence level of the percentile intervals.

    Returns:
        One row per body part (short name, e.g. ``elbow``) and ``overall``, columns ``SCORE_COLUMNS``.
    """
    frame = decided(studies)
    labels = frame[LABEL].to_numpy(dtype=int)
    preds = frame[PRED].to_numpy(dtype=int)
    probs = frame[PROB].to_numpy(dtype=float) if PROB in frame else None
    parts = frame[BODY_PART].to_numpy()
    counts = resample_counts(parts, replicates, seed)
    rows = {}
    for part in part_order(frame[BODY_PART]):
        mask = parts == part
        kappas = replicate_kappas(labels[mask], preds[mask], counts[:, mask])
        rows[short_part(part)] = _row(labels[mask], preds[mask], None if probs is None else probs[mask], kappas, level)
    rows[OVERALL] = _row(labels, preds, probs, replicate_kappas(labels, preds, counts), level)
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(SCORE_COLUMNS))


def format_score(score: pd.DataFrame, level: float = DEFAULT_LEVEL) -> str:
    """The score table as aligned text: kappa with its CI, then AUC, sensitivity, specificity, accuracy."""
    pct = f"{level:.0%}"
    header = f"{'body part':<10} {'studies':>7}  {'kappa':>6}  {pct + ' CI':<16}"
    lines = [header + "".join(f" {name:>6}" for name in ("AUC", "sens", "spec", "acc"))]
    for part, row in score.iterrows():
        undefined = math.isnan(row["kappa"])
        ci = "n/a" if undefined else f"[{row['kappa_low']:.3f}, {row['kappa_high']:.3f}]"
        lines.append(
            f"{part:<10} {int(row['n']):>7}  {_num(row['kappa'])}  {ci:<16} {_num(row['auc'])} "
            f"{_num(row['sensitivity'])} {_num(row['specificity'])} {_num(row['accuracy'])}"
        )
    return "\n".join(lines)


def _num(value: float) -> str:
    """A metric in a 6-wide column; ``n/a`` where it is undefined (NaN), never 0."""
    return f"{'n/a':>6}" if value is None or math.isnan(value) else f"{value:>6.3f}"
