"""Optuna's own pruning inside Ray's hooks: the ``optuna-hyperband`` method (Optuna's TPE with its HyperbandPruner).

Optuna prunes from inside the objective (``trial.report`` then ``trial.should_prune``). Ray's hooks are the same two
steps seen from outside: `OptunaPrunerScheduler.on_trial_result` reports the epoch's value to the trial's Optuna
trial and stops the Tune trial when the study's pruner says so. `PrunerOptunaSearch` makes the pruner the study's own
(so TPE samples each Hyperband bracket from that bracket's trials, as in Optuna) and, being a
`PrunedAwareOptunaSearch`, tells Optuna a stopped trial was PRUNED, as an objective raising ``TrialPruned`` would.
The simulation and real Tune therefore both run Optuna's TPE + HyperbandPruner, with Ray only placing trials.
"""

from __future__ import annotations

import warnings
from typing import Any, cast

import optuna
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from muratune.search.optuna_search import PrunedAwareOptunaSearch


class PrunerOptunaSearch(PrunedAwareOptunaSearch):
    """PrunedAwareOptunaSearch whose study has ``pruner`` (Ray's OptunaSearch always creates it with NopPruner)."""

    def __init__(self, *args: Any, pruner: Any, **kwargs: Any) -> None:
        self.pruner = pruner  # before super().__init__, which may set the study up
        super().__init__(*args, **kwargs)

    def _setup_study(self, mode: Any) -> None:
        super()._setup_study(mode)
        study = cast(optuna.Study, self._ot_study)  # Ray declares it None until _setup_study creates it
        study.pruner = self.pruner


class OptunaPrunerScheduler(FIFOScheduler):
    """Stop a trial when the Optuna study's pruner prunes its Optuna trial.

    Args:
        searcher: the (possibly ConcurrencyLimiter-wrapped) `PrunerOptunaSearch` whose study holds the trials.
        metric: the result key reported to Optuna.
    """

    def __init__(self, searcher: Any, metric: str) -> None:
        super().__init__()
        self._searcher = getattr(searcher, "searcher", searcher)  # unwrap ConcurrencyLimiter
        self._prune_metric = metric

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        """Report the epoch to Optuna; STOP when the pruner prunes the trial."""
        ot_trial = self._searcher._ot_trials.get(trial.trial_id)
        step = int(result.get("training_iteration", 0) or 0)
        if ot_trial is None or self._prune_metric not in result or not step:
            return TrialScheduler.CONTINUE
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the searcher reports the same step afterwards; Optuna ignores repeats
            ot_trial.report(float(result[self._prune_metric]), step)
        return TrialScheduler.STOP if ot_trial.should_prune() else TrialScheduler.CONTINUE
