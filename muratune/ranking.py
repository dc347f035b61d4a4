"""The one ranking of trials and ensemble candidates: best first, ties broken by a second score, then by id."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

RANK_BY = ("kappa", "loss")  # what top-k-mean ranks candidates by (``--rank-by``)
RANK_COLUMNS = ("best_val_kappa", "best_val_auc")  # what trials of ``search_summary.csv`` are ranked by


def _worst_last(value: float) -> float:
    """Sort key of a larger-is-better score in ascending order; NaN (undefined) sorts after every number."""
    return math.inf if math.isnan(value) else -value


def best_first(scores: Sequence[float], ids: Sequence[str], tie_break: Sequence[float] | None = None) -> list[int]:
    """Positions, best first: ``scores`` descending, then ``tie_break`` descending, then ``ids`` ascending.

    Both scores are larger-is-better (give minus a loss); NaN ranks last. The order is the same whatever order
    the items come in, so every stage that ranks the same scores picks the same best.
    """
    second = [0.0] * len(ids) if tie_break is None else [float(v) for v in tie_break]
    first = [float(v) for v in scores]
    return sorted(range(len(ids)), key=lambda j: (_worst_last(first[j]), _worst_last(second[j]), str(ids[j])))


def rank_candidates(kappas: Sequence[float], losses: Sequence[float], ids: Sequence[str], rank_by: str) -> list[int]:
    """Positions of ensemble candidates, best first: by kappa (lower loss breaks ties), or by loss alone."""
    minus_losses = [-float(v) for v in losses]
    if rank_by == "loss":
        return best_first(minus_losses, ids)
    return best_first(kappas, ids, tie_break=minus_losses)


def rank_trials(summary: pd.DataFrame) -> pd.DataFrame:
    """Non-failed trials of ``search_summary.csv``, best first: internal-val kappa, then AUC, then trial id.

    A trial without a kappa (or without an AUC, as summaries written before ``best_val_auc`` existed) ranks last.
    """
    ranked = summary[summary["state"] != "FAIL"].copy()
    for column in RANK_COLUMNS:
        if column not in ranked:
            ranked[column] = math.nan
    kappa, auc = (ranked[column].to_numpy(dtype=float) for column in RANK_COLUMNS)
    order = best_first(kappa, [str(t) for t in ranked["trial_id"]], tie_break=auc)
    return ranked.iloc[np.asarray(order, dtype=int)].reset_index(drop=True)
