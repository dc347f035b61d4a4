"""The one metrics implementation: Cohen's kappa (one value, many thresholds, from counts), AUC and study metrics."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.metrics import roc_auc_score

from muratune.constants import BODY_PART, BODY_PARTS, LABEL, PROB, STUDY_PATH, short_part

METRIC_NAMES = ("kappa", "accuracy", "auc", "sensitivity", "specificity")


def aggregate_studies(images: pd.DataFrame, prob_col: str = PROB) -> pd.DataFrame:
    """Average view probabilities into one row per study.

    Args:
        images: one row per image with ``study_path``, ``body_part``, ``label`` and a probability column.

    Returns:
        One row per study (first-appearance order) with ``study_path, body_part, label, prob, n_views``.
    """
    grouped = images.groupby(STUDY_PATH, sort=False)
    studies = grouped.agg(
        body_part=(BODY_PART, "first"), label=(LABEL, "first"), prob=(prob_col, "mean"), n_views=(prob_col, "size")
    )
    return studies.reset_index()


def kappa_from_counts(tp: ArrayLike, fp: ArrayLike, fn: ArrayLike, tn: ArrayLike) -> np.ndarray:
    """Cohen's kappa from confusion counts (vectorised over any shape).

    Where kappa is undefined (no studies, or labels and predictions constant and equal) it is 0, so that a search
    or a selection can still rank it.
    """
    tp, fp, fn, tn = (np.asarray(x, dtype=float) for x in (tp, fp, fn, tn))
    n = tp + fp + fn + tn
    with np.errstate(divide="ignore", invalid="ignore"):
        observed = (tp + tn) / n
        expected = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / n**2
        kappa = (observed - expected) / (1.0 - expected)
    return np.where(np.isclose(expected, 1.0) | (n == 0), 0.0, kappa)


def kappa_undefined(tp: int, fp: int, fn: int, tn: int) -> bool:
    """Whether kappa has no value: no studies, or labels and predictions constant and equal (expected agreement 1)."""
    return fp == 0 and fn == 0 and (tp == 0 or tn == 0)


def defined_or_none(metrics: dict[str, float]) -> dict[str, float | None]:
    """Metrics for JSON: undefined (NaN) values become None (``null``), never 0 and never the invalid ``NaN``."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()}


def confusion_counts(labels: np.ndarray, preds: np.ndarray) -> tuple[int, int, int, int]:
    """``(tp, fp, fn, tn)`` of 0/1 labels against 0/1 predictions."""
    labels = np.asarray(labels).astype(bool)
    preds = np.asarray(preds).astype(bool)
    tp = int(np.sum(labels & preds))
    fp = int(np.sum(~labels & preds))
    fn = int(np.sum(labels & ~preds))
    return tp, fp, fn, len(labels) - tp - fp - fn


def kappa(labels: np.ndarray, preds: np.ndarray) -> float:
    """Cohen's kappa of 0/1 predictions against 0/1 labels (0 where undefined, see `kappa_from_counts`)."""
    return float(kappa_from_counts(*confusion_counts(labels, preds)))


def binary_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Kappa, accuracy, AUC, sensitivity and specificity of thresholded probabilities.

    Undefined values are NaN: AUC with one class present, sensitivity with no positives, and kappa when labels and
    predictions are constant and equal (no agreement beyond chance can be measured). Reports show NaN as n/a (null
    in JSON); rankings treat it as the worst value (Ray's checkpoint order, ASHA's nanpercentile, Optuna's FAIL),
    and selections that rank through `kappa_from_counts` see 0.
    """
    labels = np.asarray(labels, dtype=int)
    probs = np.asarray(probs, dtype=float)
    if not len(labels):
        return dict.fromkeys(METRIC_NAMES, math.nan)
    tp, fp, fn, tn = confusion_counts(labels, probs >= threshold)
    both = 0 < labels.sum() < len(labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auc = float(roc_auc_score(labels, probs)) if both else math.nan
    return {
        "kappa": math.nan if kappa_undefined(tp, fp, fn, tn) else float(kappa_from_counts(tp, fp, fn, tn)),
        "accuracy": float((tp + tn) / len(labels)),
        "auc": auc,
        "sensitivity": float(tp / (tp + fn)) if tp + fn else math.nan,
        "specificity": float(tn / (tn + fp)) if tn + fp else math.nan,
    }


def study_metrics(
    studies: pd.DataFrame, prefix: str = "val", thresholds: dict[str, float] | None = None
) -> dict[str, float]:
    """Metrics overall and per body part, keyed ``{prefix}_{name}`` and ``{prefix}_{name}/{part}``.

    Args:
        studies: output of ``aggregate_studies``.
        prefix: key prefix, e.g. ``val`` or ``test``.
        thresholds: optional per-body-part thresholds (default 0.5 everywhere).
    """
    thresholds = thresholds or {}
    cut = studies[BODY_PART].map(lambda part: thresholds.get(part, 0.5)).to_numpy(dtype=float)
    labels = studies[LABEL].to_numpy(dtype=int)
    probs = studies[PROB].to_numpy(dtype=float)
    # Apply per-part thresholds by shifting probabilities so one 0.5 cut works for all rows.
    shifted = probs - cut + 0.5
    out = {f"{prefix}_{k}": v for k, v in binary_metrics(labels, shifted).items()}
    out[f"{prefix}_auc"] = binary_metrics(labels, probs)["auc"]
    for part in BODY_PARTS:
        mask = (studies[BODY_PART] == part).to_numpy()
        if not mask.any():
            continue
        part_metrics = binary_metrics(labels[mask], shifted[mask])
        part_metrics["auc"] = binary_metrics(labels[mask], probs[mask])["auc"]
        for name, value in part_metrics.items():
            out[f"{prefix}_{name}/{short_part(part)}"] = value
    out[f"{prefix}_studies"] = float(len(studies))
    return out


def kappa_at_thresholds(labels: np.ndarray, probs: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Cohen's kappa of ``probs >= cut`` for every cut at once (see `kappa_from_counts`)."""
    labels = np.asarray(labels, dtype=int)
    order = np.argsort(probs, kind="stable")
    sorted_probs = np.asarray(probs, dtype=float)[order]
    positives_below = np.concatenate([[0], np.cumsum(labels[order])])
    n, positives = len(labels), int(labels.sum())
    below = np.searchsorted(sorted_probs, cuts, side="left")  # predicted negative
    fn = positives_below[below]
    tp = positives - fn
    fp = (n - below) - tp
    tn = below - fn
    return kappa_from_counts(tp, fp, fn, tn)


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    """ECE: the study-weighted mean gap between mean probability and abnormal fraction, over equal-width bins.

    Bins are ``[0, 0.1), ..., [0.9, 1]``; NaN for no rows.
    """
    labels = np.asarray(labels, dtype=float)
    probs = np.asarray(probs, dtype=float)
    if not len(labels):
        return math.nan
    which = np.clip((probs * bins).astype(int), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    gap = np.abs(np.bincount(which, probs, minlength=bins) - np.bincount(which, labels, minlength=bins))
    return float(gap.sum() / count.sum())


def chance_ece(probs: np.ndarray, bins: int = 10, draws: int = 1000, seed: int = 0) -> float:
    """The ECE a perfectly calibrated model with these probabilities shows by chance alone on this many studies.

    The mean `expected_calibration_error` over ``draws`` label sets drawn as ``Bernoulli(probs)``: on a few hundred
    studies it is about 0.05, so a measured ECE near it is as calibrated as the sample can show (NaN for no rows).
    """
    probs = np.asarray(probs, dtype=float)
    probs = probs[~np.isnan(probs)]
    if not len(probs):
        return math.nan
    rng = np.random.default_rng(seed)
    labels = rng.random((draws, len(probs))) < probs
    return float(np.mean([expected_calibration_error(row, probs, bins) for row in labels]))


def brier_score(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean squared difference between probability and 0/1 label (NaN for no rows)."""
    labels = np.asarray(labels, dtype=float)
    probs = np.asarray(probs, dtype=float)
    return float(np.mean((probs - labels) ** 2)) if len(labels) else math.nan


def calibration_metrics(studies: pd.DataFrame, prefix: str = "test", suffix: str = "") -> dict[str, float]:
    """ECE and Brier score of the studies that have a probability, keyed ``{prefix}_ece{suffix}``, ``..._brier...``."""
    known = studies[studies[PROB].notna()]
    labels = known[LABEL].to_numpy(dtype=float)
    probs = known[PROB].to_numpy(dtype=float)
    return {
        f"{prefix}_ece{suffix}": expected_calibration_error(labels, probs),
        f"{prefix}_brier{suffix}": brier_score(labels, probs),
    }


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities (0 for no rows)."""
    clipped = np.clip(probs, 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))) if len(labels) else 0.0


def tune_threshold(labels: np.ndarray, probs: np.ndarray) -> float:
    """Return the threshold maximising Cohen's kappa (midpoints between sorted probabilities; ties -> 0.5-nearest)."""
    labels = np.asarray(labels, dtype=int)
    probs = np.asarray(probs, dtype=float)
    if len(np.unique(labels)) < 2:
        return 0.5
    values = np.unique(probs)
    candidates = np.concatenate([[0.5], (values[:-1] + values[1:]) / 2])
    kappas = kappa_at_thresholds(labels, probs, candidates)
    best = np.flatnonzero(kappas >= kappas.max() - 1e-12)
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])
