"""Promotion-type (pause and resume) ASHA, a candidate measured against Ray's stopping-type ASHA (issue 29).

Ray ships ASHA only as the stopping type (``AsyncHyperBandScheduler``): a trial runs on until a rung finds it
below the cut, and the first trials to reach an empty rung always continue. Li et al. (MLSys 2020, "A System for
Massively Parallel Hyperparameter Tuning", Algorithm 2) describe the promotion type, which Syne Tune ships as
``type="promotion"``: every trial pauses at each rung, and a free worker resumes the best paused trial that is in
the top 1/rf of its rung's trials (the highest rung first), or else starts a new one. `PromotionASHA` is that, as a
Ray ``TrialScheduler`` the simulation drives (PAUSE frees the worker; a resumed trial continues from its last
epoch, as from its checkpoint).

Two parts of muratune's search assume the stopping type, so the candidates here adapt them:

- the searcher is not wrapped in Ray's ConcurrencyLimiter, which counts paused trials as live and would stop
  suggesting once ``workers`` trials are paused (the simulation asks for a new trial only for a free worker);
- a paused trial stays RUNNING in the Optuna study, so `FirstRungStartupSampler` ends the random start-up on trials
  *observed at the first rung* rather than on finished ones (which would keep it random for the whole search).

`methods.py` builds ``muratune-promotion`` (rung-tpe, as muratune's config sets it) and ``random-asha-promotion``
from the same config as ``muratune`` and ``random-asha``; only the scheduler type differs.
"""

from __future__ import annotations

from typing import Any

from optuna.study import Study
from optuna.trial import TrialState
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from muratune.search.rung_sampler import RungModelSampler, asha_levels


class PromotionASHA(FIFOScheduler):
    """Asynchronous successive halving with promotions (pause and resume).

    Args:
        metric: the result key the rungs rank by.
        mode: ``max`` or ``min``.
        max_t: epochs of a full trial.
        grace_period: the first rung.
        reduction_factor: rungs at ``grace_period * reduction_factor**k`` below ``max_t``; the top
            ``1/reduction_factor`` of a rung is promoted.
        time_attr: the result key counting epochs.
    """

    def __init__(
        self,
        metric: str,
        mode: str,
        max_t: int,
        grace_period: int,
        reduction_factor: float,
        time_attr: str = "training_iteration",
    ) -> None:
        super().__init__()
        self.rung_metric, self.sign = metric, 1.0 if mode == "max" else -1.0
        self.max_t, self.reduction_factor, self.time_attr = max_t, reduction_factor, time_attr
        self.levels = asha_levels(grace_period, reduction_factor, max_t)[:-1]
        self.rungs: dict[int, dict[str, float]] = {level: {} for level in self.levels}  # level -> {trial id: value}
        self.promoted: dict[int, set[str]] = {level: set() for level in self.levels}
        self.trials: dict[str, Any] = {}
        self.resumed: list[str] = []  # paused trials given a worker again, in order

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        """Keep the metric and mode given at construction."""
        return True

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        """Remember the trial, to resume it later."""
        self.trials[trial.trial_id] = trial

    def promotable(self, level: int) -> list[str]:
        """The trials in the top ``1/reduction_factor`` of the rung at ``level`` not yet promoted, best first."""
        rung = self.rungs[level]
        top = sorted(rung, key=lambda trial_id: -self.sign * rung[trial_id])[: int(len(rung) // self.reduction_factor)]
        return [trial_id for trial_id in top if trial_id not in self.promoted[level]]

    def next_promotion(self) -> tuple[int, Any] | None:
        """The (rung, trial) to promote next: the best promotable trial of the highest rung that has one."""
        for level in reversed(self.levels):
            for trial_id in self.promotable(level):
                trial = self.trials[trial_id]
                if trial.status in (Trial.PAUSED, Trial.RUNNING):
                    return level, trial
        return None

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        """Record the value at a rung, then continue if this trial is the next promotion, else pause."""
        epoch = int(result[self.time_attr])
        if epoch >= self.max_t:
            return TrialScheduler.STOP
        if epoch not in self.rungs:
            return TrialScheduler.CONTINUE
        self.rungs[epoch][trial.trial_id] = float(result[self.rung_metric])
        promotion = self.next_promotion()
        if promotion is not None and promotion[1] is trial:
            self.promoted[promotion[0]].add(trial.trial_id)
            return TrialScheduler.CONTINUE
        return TrialScheduler.PAUSE

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        """A paused trial to promote, else a pending (new) one, else None (the searcher is asked for one)."""
        promotion = self.next_promotion()
        if promotion is not None and promotion[1].status == Trial.PAUSED:
            self.promoted[promotion[0]].add(promotion[1].trial_id)
            self.resumed.append(promotion[1].trial_id)
            return promotion[1]
        return next((t for t in tune_controller.get_trials() if t.status == Trial.PENDING), None)

    def debug_string(self) -> str:
        """One line for Tune's progress output."""
        counts = ", ".join(f"{level}: {len(rung)}" for level, rung in self.rungs.items())
        return f"Promotion-type ASHA, trials per rung {{{counts}}}, {len(self.resumed)} resumed"


class FirstRungStartupSampler(RungModelSampler):
    """muratune's rung model, its random start-up ending on trials observed at the first rung (paused ones too)."""

    def started_up(self, study: Study) -> bool:
        """Whether ``n_startup_trials`` trials have a value at the first level (finished or paused there)."""
        trials = study._get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
        observed = [t for t in trials if t.state != TrialState.RUNNING or self.levels[0] in t.intermediate_values]
        return len(observed) >= self.n_startup_trials
