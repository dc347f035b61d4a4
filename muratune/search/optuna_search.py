"""OptunaSearch that records ASHA-stopped trials as PRUNED (with per-epoch values), not as COMPLETE."""

from __future__ import annotations

import logging
from typing import Any

from ray.tune.search.optuna import OptunaSearch

from muratune.constants import EPOCH

logger = logging.getLogger(__name__)


class PrunedAwareOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch, with honest trial states in the Optuna study.

    Stock OptunaSearch tells Optuna that a trial ASHA stopped early is COMPLETE with the metric of a
    truncated run, which biases TPE toward configurations that look good early. Here:

    - a trial that reached ``max_epochs`` is COMPLETE with its final metric;
    - a trial stopped earlier (by ASHA or the time budget) is PRUNED; its per-epoch intermediate values,
      reported on every result, stay in the study;
    - a trial that errored is FAIL, even if it reported some epochs first.

    A trial stopped while paused (promotion-type ASHA) comes with no result: its epochs are those it last reported.

    Args:
        max_epochs: epochs of a full run.
        prune_stopped: set False to reproduce the stock behaviour (for benchmarks).
        **kwargs: passed to OptunaSearch.
    """

    def __init__(self, *args: Any, max_epochs: int, prune_stopped: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_epochs = max_epochs
        self.prune_stopped = prune_stopped
        self.epochs_reported: dict[str, int] = {}

    def suggest(self, trial_id: str) -> dict | None:
        """Ray's suggestion; its Optuna trial records the Ray trial id from the start, so a trial Tune ends without
        telling the searcher (`muratune.search.summary.prune_cut_trials`) keeps its link to its Ray trial."""
        suggestion = super().suggest(trial_id)
        if isinstance(suggestion, dict) and trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr("ray_trial_id", trial_id)
        return suggestion

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Record the value as an intermediate one (Ray's) and the trial's epochs."""
        super().on_trial_result(trial_id, result)
        self.epochs_reported[trial_id] = _epochs(result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Tell Optuna the trial's final state."""
        import optuna

        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result=result, error=error)
        ot_trial = self._ot_trials[trial_id]
        epochs = _epochs(result) if result else self.epochs_reported.get(trial_id, 0)
        ot_trial.set_user_attr("ray_trial_id", trial_id)
        ot_trial.set_user_attr("epochs", epochs)
        self._report_final_result(ot_trial, result)
        if error:
            state, value = optuna.trial.TrialState.FAIL, None
        elif self.prune_stopped and epochs < self.max_epochs:
            state, value = optuna.trial.TrialState.PRUNED, None
        else:
            return super().on_trial_complete(trial_id, result=result, error=error)
        try:
            self._ot_study.tell(ot_trial, value, state=state)  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - Optuna refuses some tells (e.g. already finished); keep searching
            logger.warning("could not record trial %s in Optuna: %s", trial_id, exc)
        self._completed_trials.add(trial_id)

    def _report_final_result(self, ot_trial: Any, result: dict | None) -> None:
        """Record the last result as an intermediate value; Tune sends it only to ``on_trial_complete``."""
        if not result or self.metric not in result or isinstance(self.metric, list):
            return
        import warnings

        step = int(result.get("training_iteration", 0) or 0)
        if step:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna warns (and ignores) when the step was already reported
                ot_trial.report(result[self.metric], step)


def _epochs(result: dict | None) -> int:
    """The epochs a result says its trial has trained."""
    result = result or {}
    return int(result.get(EPOCH, result.get("training_iteration", 0)) or 0)
