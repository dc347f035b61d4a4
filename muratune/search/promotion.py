"""Promotion-type (pause and resume) ASHA for Ray Tune, and the concurrency limit that goes with it.

Ray ships ASHA only as the stopping type (``AsyncHyperBandScheduler``): a trial runs on until a rung finds it below
the cut, and the first trials to reach an empty rung always go on. Li et al. (MLSys 2020, "A System for Massively
Parallel Hyperparameter Tuning", Algorithm 2) describe the promotion type, which Syne Tune ships as
``type="promotion"``: every trial pauses at each rung, and a free worker resumes the best paused trial in the top
``1/reduction_factor`` of its rung (the highest rung first), or else starts a new one. A resumed trial goes on from
its latest checkpoint, which Tune always keeps (muratune's trials report one every epoch).

Two of Tune's parts assume trials are either running or finished, so `PromotionLimiter` replaces Ray's
ConcurrencyLimiter: it does not count paused trials as live, and suggests no new trial while a promotion waits for
the next free worker. Once the searcher has given its ``num_samples`` trials and nothing runs or can be promoted,
the scheduler stops the trials left paused, as Tune would otherwise wait for them forever; they are PRUNED in the
Optuna study, like trials stopped by stopping-type ASHA. Tune saves no scheduler state, so the limit carries the
rungs in its own: a resumed search promotes as the interrupted one would have.
"""

from __future__ import annotations

import bisect
import copy
import math
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher

from muratune.search.rung_sampler import asha_levels

_ACTIVE = (Trial.RUNNING, Trial.PENDING)
_RUNGS_KEY = "promotion_rungs"  # the scheduler's rungs in the limit's snapshot


class PromotionASHA(FIFOScheduler):
    """Asynchronous successive halving with promotions (pause and resume).

    Args:
        metric: the result key the rungs rank by.
        mode: ``max`` or ``min``.
        max_t: epochs of a full trial.
        grace_period: the first rung.
        reduction_factor: rungs at ``grace_period * reduction_factor**k`` below ``max_t``; the top
            ``1/reduction_factor`` of a rung is promoted.
        max_concurrent: the most trials running at once (paused ones not counted); None for no limit.
        time_attr: the result key counting epochs.
    """

    def __init__(
        self,
        metric: str,
        mode: str,
        max_t: int,
        grace_period: int,
        reduction_factor: float,
        max_concurrent: int | None = None,
        time_attr: str = "training_iteration",
    ) -> None:
        super().__init__()
        self.rung_metric, self.sign = metric, 1.0 if mode == "max" else -1.0
        self.max_t, self.reduction_factor, self.time_attr = max_t, reduction_factor, time_attr
        self.max_concurrent = max_concurrent
        self.levels = asha_levels(grace_period, reduction_factor, max_t)[:-1]
        self.rungs: dict[int, dict[str, float]] = {level: {} for level in self.levels}  # level -> {trial id: value}
        self.ranked: dict[int, list[str]] = {level: [] for level in self.levels}  # each rung's non-NaN ids, best first
        self.promoted: dict[int, set[str]] = {level: set() for level in self.levels}
        self.trials: dict[str, Any] = {}
        self.paused: set[str] = set()  # trials this scheduler paused and has not resumed (pausing ones included)
        self.resumed: list[str] = []  # paused trials given a worker again, in order

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        """Keep the metric and mode given at construction (the rung metric, beside the search's)."""
        return True

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        """Remember the trial, to resume it later.

        A restored search requeues every unfinished trial as PENDING, after its searcher (and so these rungs) came
        back: a trial paused here is PAUSED again, or Tune would start it unpromoted (it starts any pending trial).
        """
        self.trials[trial.trial_id] = trial
        if trial.trial_id in self.paused and trial.status == Trial.PENDING:
            trial.set_status(Trial.PAUSED)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        """A finished trial is no longer paused."""
        self.paused.discard(trial.trial_id)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        """A stopped (paused or pending) trial is no longer paused."""
        self.paused.discard(trial.trial_id)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        """A failed trial is no longer paused."""
        self.paused.discard(trial.trial_id)

    def promotable(self, level: int) -> list[str]:
        """The trials in the top ``1/reduction_factor`` of the rung at ``level`` not yet promoted, best first.

        A NaN value (a kappa or AUC of one class only) ranks last and is never promoted.
        """
        top = self.ranked[level][: int(len(self.rungs[level]) // self.reduction_factor)]
        return [trial_id for trial_id in top if trial_id not in self.promoted[level]]

    def record(self, level: int, trial_id: str, value: float) -> None:
        """Set a trial's value at the rung at ``level``, keeping it ranked (a restarted trial replaces its own)."""
        rung, ranked = self.rungs[level], self.ranked[level]
        if trial_id in rung and not math.isnan(rung[trial_id]):
            ranked.remove(trial_id)
        rung[trial_id] = value
        if not math.isnan(value):
            bisect.insort(ranked, trial_id, key=lambda t: -self.sign * rung[t])

    def next_promotion(self, reporting: str | None = None) -> tuple[int, str] | None:
        """The (rung, trial id) to promote next: the best promotable paused (or reporting) trial, top rung first."""
        for level in reversed(self.levels):
            for trial_id in self.promotable(level):
                if trial_id == reporting or self._resumable(trial_id):
                    return level, trial_id
        return None

    def _resumable(self, trial_id: str) -> bool:
        """Whether the trial is paused here and Tune has not ended it (a time budget ends paused trials too)."""
        return trial_id in self.paused and self.trials[trial_id].status not in (Trial.TERMINATED, Trial.ERROR)

    def landed_pauses(self) -> set[str]:
        """The paused trials whose pause (a checkpoint save) is over, so their worker is free."""
        return {trial_id for trial_id in self.paused if self.trials[trial_id].status == Trial.PAUSED}

    def promotion_waiting(self) -> bool:
        """Whether a paused trial is to be promoted: the next free worker goes to it, not to a new trial."""
        return self.next_promotion() is not None

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        """Record the value at a rung, then continue if this trial is the next promotion, else pause."""
        epoch = int(result[self.time_attr])
        if epoch >= self.max_t:
            return TrialScheduler.STOP
        if epoch not in self.rungs or trial.trial_id in self.promoted[epoch]:  # between rungs, or passed this one
            return TrialScheduler.CONTINUE
        self.record(epoch, trial.trial_id, float(result[self.rung_metric]))
        promotion = self.next_promotion(reporting=trial.trial_id)
        if promotion is not None and promotion[1] == trial.trial_id:
            self.promoted[promotion[0]].add(trial.trial_id)
            return TrialScheduler.CONTINUE
        self.paused.add(trial.trial_id)
        return TrialScheduler.PAUSE

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        """A paused trial to promote, else a pending (new) one; once no more will come, stop the paused ones."""
        promotion = self.next_promotion()
        if promotion is not None:
            return self._resume(*promotion)
        pending = next((t for t in tune_controller.get_trials() if t.status == Trial.PENDING), None)
        if pending is None:
            self._stop_paused_if_over(tune_controller)
        return pending

    def _stop_paused_if_over(self, tune_controller: Any) -> None:
        """Stop the trials left paused once the searcher is done and none runs: Tune ends when every trial has."""
        if not tune_controller.search_alg.is_finished() or self._running():
            return
        for trial_id in sorted(self.landed_pauses()):
            tune_controller.stop_trial(self.trials[trial_id])

    def _resume(self, level: int, trial_id: str) -> Any:
        """The paused trial, promoted, once its pause (a checkpoint save) is over and a worker is free; else None."""
        trial = self.trials[trial_id]
        if trial.status != Trial.PAUSED or (self.max_concurrent is not None and self._running() >= self.max_concurrent):
            return None
        self.promoted[level].add(trial_id)
        self.paused.discard(trial_id)
        self.resumed.append(trial_id)
        return trial

    def _running(self) -> int:
        """Trials running or about to (paused ones, and those still pausing, not counted)."""
        return sum(t.status in _ACTIVE and t.trial_id not in self.paused for t in self.trials.values())

    def rung_state(self) -> dict[str, Any]:
        """What the rungs hold, for the limit's snapshot: Tune saves its searcher's state, never its scheduler's."""
        return copy.deepcopy(
            {"rungs": self.rungs, "promoted": self.promoted, "paused": self.paused, "resumed": self.resumed}
        )

    def restore_rung_state(self, state: dict[str, Any]) -> None:
        """Take the rungs back from a snapshot (`rung_state`), so a resumed search promotes as the first would have.

        Tune requeues the paused trials afterwards (`on_trial_add` pauses them again): they wait for a promotion.
        """
        for level in self.levels:
            self.rungs[level], self.ranked[level] = {}, []
            for trial_id, value in state["rungs"].get(level, {}).items():
                self.record(level, trial_id, value)
            self.promoted[level] = set(state["promoted"].get(level, ()))
        self.paused, self.resumed = set(state["paused"]), list(state["resumed"])

    def debug_string(self) -> str:
        """One line for Tune's progress output."""
        counts = ", ".join(f"{level}: {len(rung)}" for level, rung in self.rungs.items())
        return f"Promotion-type ASHA, trials per rung {{{counts}}}, {len(self.resumed)} resumed"


class PromotionLimiter(ConcurrencyLimiter):
    """Ray's ConcurrencyLimiter for `PromotionASHA`: paused trials are not live, and a waiting promotion comes first.

    Args:
        searcher: the searcher to limit.
        max_concurrent: the most trials running at once.
        scheduler: the promotion scheduler, which knows the paused trials and the promotions waiting.
    """

    def __init__(self, searcher: Searcher, max_concurrent: int, scheduler: PromotionASHA) -> None:
        super().__init__(searcher, max_concurrent=max_concurrent)
        self.scheduler = scheduler

    def suggest(self, trial_id: str) -> dict | None:
        """A new trial, unless ``max_concurrent`` trials run (or still pause) or a paused trial waits for a worker."""
        if not self._limit_concurrency:
            return self.searcher.suggest(trial_id)
        assert trial_id not in self.live_trials, f"Trial ID {trial_id} must be unique: already found in set."
        running = len(self.live_trials - self.scheduler.landed_pauses())
        if running >= self.max_concurrent or self.scheduler.promotion_waiting():
            return None
        suggestion = self.searcher.suggest(trial_id)
        if suggestion not in (None, Searcher.FINISHED):
            self.live_trials.add(trial_id)
            self.num_unfinished_live_trials += 1
        return suggestion

    def get_state(self) -> dict:
        """The limit's own state for Tune's snapshot, with the scheduler's rungs (Tune keeps no scheduler state).

        The scheduler itself stays out: a restore keeps the restored Tuner's own.
        """
        state = copy.deepcopy({k: v for k, v in self.__dict__.items() if k not in ("searcher", "scheduler")})
        return {**state, _RUNGS_KEY: self.scheduler.rung_state()}

    def set_state(self, state: dict) -> None:
        """Restore the limit and the scheduler's rungs (a snapshot from before rungs were saved has none)."""
        state = dict(state)
        rungs = state.pop(_RUNGS_KEY, None)
        super().set_state(state)
        if rungs is not None:
            self.scheduler.restore_rung_state(rungs)
