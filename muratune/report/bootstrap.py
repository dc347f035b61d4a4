"""Stratified bootstrap of study-level Cohen's kappa: studies resampled within each body part, percentile CIs."""

from __future__ import annotations

import numpy as np

from muratune.metrics import kappa_from_counts

DEFAULT_REPLICATES = 1000
DEFAULT_LEVEL = 0.95


def resample_counts(strata: np.ndarray, replicates: int, seed: int) -> np.ndarray:
    """How often each study is drawn in each replicate, resampling with replacement within its stratum.

    Every replicate keeps each stratum's size, so a body part never disappears from a replicate and the
    body-part mix of the pooled (overall) kappa is that of the real test split.

    Args:
        strata: one stratum label (body part) per study.
        replicates: number of bootstrap replicates.
        seed: random seed; strata are visited in sorted order so the draw depends only on the data.

    Returns:
        ``replicates x n_studies`` integer counts.
    """
    strata = np.asarray(strata)
    rng = np.random.default_rng(seed)
    counts = np.zeros((replicates, len(strata)), dtype=np.int32)
    for stratum in sorted(set(strata.tolist())):
        columns = np.flatnonzero(strata == stratum)
        n = len(columns)
        counts[:, columns] = rng.multinomial(n, np.full(n, 1.0 / n), size=replicates)
    return counts


def replicate_kappas(labels: np.ndarray, preds: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Kappa of every bootstrap replicate, given the per-study draw counts of ``resample_counts``."""
    labels = np.asarray(labels, dtype=bool)
    preds = np.asarray(preds, dtype=bool)
    cells = np.stack([labels & preds, ~labels & preds, labels & ~preds, ~labels & ~preds], axis=1).astype(float)
    tp, fp, fn, tn = (counts @ cells).T
    return kappa_from_counts(tp, fp, fn, tn)


def percentile_interval(values: np.ndarray, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """The percentile bootstrap interval at ``level`` (e.g. 2.5th and 97.5th percentiles for 0.95)."""
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(np.asarray(values, dtype=float), [tail, 100.0 - tail])
    return float(low), float(high)
