"""Measures of searches (best-so-far curve, speedup, regret, any-time normalised regret and rank) and aggregates.

The any-time measures are those of Syne Tune's benchmarking and the BOHB and DEHB papers: each run's best-so-far
accuracy is read at shares of its epoch budget (`BUDGET_GRID`); normalised regret is 0 at the best and 1 at the worst
accuracy any method and seed saw on the task; methods are ranked per task, seed and share (1 is best); aggregates
over tasks and seeds are interquartile means with percentile-bootstrap 95% CIs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench.lcbench.simulate import Event

BOOTSTRAP_RESAMPLES = 2000
BUDGET_POINTS = 100
BUDGET_GRID = np.arange(1, BUDGET_POINTS + 1) / BUDGET_POINTS  # shares of the budget the any-time measures read


@dataclass
class RunCurve:
    """Best-so-far validation accuracy after each epoch of one search, with the (simulated) clock."""

    best: np.ndarray  # best[i]: best accuracy after i + 1 epochs
    clock_s: np.ndarray

    @classmethod
    def from_events(cls, events: Sequence[Event]) -> RunCurve:
        """Build the curve from the epochs in the order they finished."""
        accuracy = np.array([e.accuracy for e in events], dtype=float)
        return cls(best=np.maximum.accumulate(accuracy), clock_s=np.array([e.clock_s for e in events], dtype=float))

    @property
    def final(self) -> float:
        """The best accuracy at the budget."""
        return float(self.best[-1])

    def at_budget_shares(self, budget: int, shares: np.ndarray = BUDGET_GRID) -> np.ndarray:
        """Best-so-far accuracy once each share of ``budget`` epochs was used (the last value past the curve's end)."""
        index = np.ceil(np.asarray(shares) * budget).astype(int) - 1
        return self.best[np.clip(index, 0, len(self.best) - 1)]

    def epochs_to_reach(self, value: float) -> int | None:
        """Epochs used when the best first reached ``value`` (None if it never did)."""
        hits = np.flatnonzero(self.best >= value - 1e-12)
        return int(hits[0]) + 1 if len(hits) else None


def speedup(method: RunCurve, baseline: RunCurve) -> float:
    """Epochs ``baseline`` needs to reach its own final best, over the epochs ``method`` needs (0 if never)."""
    target = baseline.final
    needed = method.epochs_to_reach(target)
    return 0.0 if needed is None else baseline.epochs_to_reach(target) / needed  # type: ignore[operator]


def regret(best_known: float, best: float) -> float:
    """Best known accuracy minus the method's best, as a fraction (accuracies are fractions)."""
    return float(best_known - best)


def median_ci(values: Sequence[float], seed: int = 0) -> tuple[float, float, float]:
    """Median with a percentile-bootstrap 95% confidence interval."""
    from scipy.stats import bootstrap

    data = np.asarray(values, dtype=float)
    if len(data) < 2 or np.all(data == data[0]):
        return float(np.median(data)), float(np.median(data)), float(np.median(data))
    result = bootstrap(
        (data,),
        np.median,
        n_resamples=BOOTSTRAP_RESAMPLES,
        confidence_level=0.95,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(np.median(data)), float(result.confidence_interval.low), float(result.confidence_interval.high)


def wilcoxon_less(first: Sequence[float], second: Sequence[float]) -> float:
    """One-sided paired Wilcoxon signed-rank p-value that ``first`` is below ``second`` (1.0 when all pairs tie)."""
    from scipy.stats import wilcoxon

    diff = np.asarray(first, dtype=float) - np.asarray(second, dtype=float)
    if len(diff) == 0 or np.all(diff == 0):
        return 1.0
    return float(wilcoxon(first, second, alternative="less").pvalue)


def normalised_regret(best: np.ndarray, low: float, high: float) -> np.ndarray:
    """(high - best) / (high - low), in [0, 1] for accuracies between the task's worst ``low`` and best ``high``."""
    span = high - low
    return np.zeros_like(best, dtype=float) if span <= 0 else (high - np.asarray(best, dtype=float)) / span


def regret_auc(normalised: np.ndarray) -> float:
    """The area under a normalised-regret curve read at `BUDGET_GRID` (its mean), in [0, 1]: lower is better."""
    return float(np.mean(normalised))


def ranks(best_by_method: np.ndarray) -> np.ndarray:
    """Each method's rank (1 = highest accuracy, ties share their mean rank) per column of a methods x shares array."""
    from scipy.stats import rankdata

    return rankdata(-np.asarray(best_by_method, dtype=float), axis=0)


def iqm(values: np.ndarray) -> np.ndarray:
    """Interquartile mean along the first axis (the mean of the middle 50%)."""
    from scipy.stats import trim_mean

    return np.asarray(trim_mean(np.asarray(values, dtype=float), 0.25, axis=0))


def iqm_ci(values: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IQM along the first axis (runs) with a percentile-bootstrap 95% CI, for each remaining column."""
    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    resamples = rng.integers(0, len(data), size=(BOOTSTRAP_RESAMPLES, len(data)))
    boot = np.stack([iqm(data[rows]) for rows in resamples])
    return iqm(data), np.percentile(boot, 2.5, axis=0), np.percentile(boot, 97.5, axis=0)
