"""Measures of one search (best-so-far curve, speedup against random search, regret) and their aggregates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench.lcbench.simulate import Event

BOOTSTRAP_RESAMPLES = 2000


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

    def epochs_to_reach(self, value: float) -> int | None:
        """Epochs used when the best first reached ``value`` (None if it never did)."""
        hits = np.flatnonzero(self.best >= value - 1e-12)
        return int(hits[0]) + 1 if len(hits) else None


def speedup(method: RunCurve, random_search: RunCurve) -> float:
    """Epochs random search needs to reach its own final best, over the epochs ``method`` needs (0 if never)."""
    target = random_search.final
    needed = method.epochs_to_reach(target)
    return 0.0 if needed is None else random_search.epochs_to_reach(target) / needed  # type: ignore[operator]


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
