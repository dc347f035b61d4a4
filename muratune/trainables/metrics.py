"""Study-level metrics: view probabilities averaged per study, then kappa, AUC, sensitivity and specificity."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from sklearn.metrics import cohen_kappa_score, confusion_matrix, roc_auc_score

from muratune.constants import BODY_PART, BODY_PARTS, LABEL, STUDY_PATH, short_part

PROB = "prob"
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


def binary_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Kappa, accuracy, AUC, sensitivity and specificity of thresholded probabilities.

    Undefined values are NaN: AUC with one class present, sensitivity with no positives, and kappa when labels and
    predictions are constant and equal (no agreement beyond chance can be measured). Reports show NaN as n/a (null
    in JSON); rankings treat it as the worst value (Ray's checkpoint order, ASHA's nanpercentile, Optuna's FAIL).
    """
    labels = np.asarray(labels, dtype=int)
    probs = np.asarray(probs, dtype=float)
    if not len(labels):
        return dict.fromkeys(METRIC_NAMES, math.nan)
    preds = (probs >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, preds, labels=[0, 1]).ravel()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kappa = float(cohen_kappa_score(labels, preds, labels=[0, 1]))
    both = 0 < labels.sum() < len(labels)
    return {
        "kappa": kappa,
        "accuracy": float((tp + tn) / len(labels)),
        "auc": float(roc_auc_score(labels, probs)) if both else math.nan,
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


def defined_or_none(metrics: dict[str, float]) -> dict[str, float | None]:
    """Metrics for JSON: undefined (NaN) values become None (``null``), never 0 and never the invalid ``NaN``."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()}


def kappa_at_thresholds(labels: np.ndarray, probs: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Cohen's kappa of ``probs >= cut`` for every cut at once (0 where undefined: a cut is ranked, not reported)."""
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
    observed = (tp + tn) / n
    expected = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / n**2
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = (observed - expected) / (1 - expected)
    return np.where(np.isclose(expected, 1.0), 0.0, kappa)


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
