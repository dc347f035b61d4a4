"""ASHA that ranks trials at its rungs by a metric of its own, while the searcher optimises the search metric."""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler


class RungMetricASHA(ASHAScheduler):
    """Ray's ASHA with its own rung metric (e.g. ``val_auc``) beside TuneConfig's metric (``val_kappa``).

    Stock ASHA refuses a TuneConfig metric once it was built with one; this keeps the rung metric and accepts
    the search's, so Optuna, checkpoint ranking and the reports still use the search metric.
    """

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        """Keep the rung metric and mode given at construction."""
        return True
