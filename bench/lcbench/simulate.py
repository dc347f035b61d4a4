"""A discrete-event stand-in for Tune's controller that drives real Ray searchers and schedulers on surrogate curves.

It calls the same hooks, in the same order, as ``ray.tune.execution.tune_controller.TuneController``:

- a free worker takes ``scheduler.choose_trial_to_run`` (a PENDING or unpaused PAUSED trial); when there is none it
  asks ``searcher.suggest`` for a new trial, which ``scheduler.on_trial_add`` places;
- each finished epoch goes to ``scheduler.on_trial_result``, then (unless the decision is STOP)
  ``searcher.on_trial_result``;
- STOP, and the end of the last epoch, go through `SimController.stop_trial`: ``on_trial_complete`` on the scheduler
  and the searcher with the last result (or ``on_trial_remove`` for a trial that is not running);
- PAUSE frees the worker; a resumed trial continues from its last epoch (as from a checkpoint).

Epochs take the surrogate's per-epoch seconds on a simulated clock, so with several workers trials finish out of
order. The run ends when ``budget`` epochs have been trained in all; trials still running are then stopped. Each
epoch is trained, and counted, once.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from muratune.constants import EPOCH, METRIC, VAL_LOSS

CurveFn = Callable[[dict[str, Any]], Any]  # hparams -> an object with accuracy, cross_entropy, epoch_s arrays


@dataclass(eq=False)
class SimTrial:
    """The parts of a Tune ``Trial`` that schedulers read: id, config, status, last result."""

    trial_id: str
    config: dict[str, Any]
    curve: Any
    status: str = Trial.PENDING
    epochs: int = 0
    last_result: dict[str, Any] = field(default_factory=dict)
    is_saving: bool = False

    def __str__(self) -> str:
        return self.trial_id


@dataclass
class Event:
    """One reported epoch: which trial, when, and what it reported."""

    trial_id: str
    epoch: int
    clock_s: float
    accuracy: float


class _SearchAlg:
    """What schedulers reach through ``tune_controller.search_alg`` (HyperBandForBOHB calls ``searcher.on_pause``;
    promotion-type ASHA asks whether the searcher has finished)."""

    def __init__(self, searcher: Any) -> None:
        self.searcher = searcher
        self.finished = False

    def is_finished(self) -> bool:
        """Whether the searcher said it has no more trials to give."""
        return self.finished


class SimController:
    """Runs one search on a simulated clock with ``workers`` concurrent trials.

    Args:
        searcher: a Ray ``Searcher`` (e.g. ConcurrencyLimiter around OptunaSearch), with its space already set.
        scheduler: a Ray ``TrialScheduler``, with metric and mode already set.
        curve_fn: the surrogate's curve of a configuration.
        workers: concurrent trials.
        budget: total epochs over all trials.
        max_epochs: epochs of a full trial.
    """

    def __init__(
        self,
        searcher: Any,
        scheduler: TrialScheduler,
        curve_fn: CurveFn,
        workers: int,
        budget: int,
        max_epochs: int,
    ) -> None:
        self.searcher, self.curve_fn = searcher, curve_fn
        # Any: Ray types the hooks' arguments as TuneController and Trial, which this class and SimTrial stand in for
        self.scheduler: Any = scheduler
        self.search_alg = _SearchAlg(searcher)
        self.workers, self.budget, self.max_epochs = workers, budget, max_epochs
        self.trials: list[SimTrial] = []
        self.by_id: dict[str, SimTrial] = {}
        self.events: list[Event] = []
        self.clock = 0.0
        self.started_epochs = 0
        self._queue: list[tuple[float, int, str]] = []
        self._running: set[str] = set()
        self._seq = 0

    # ------------------------------------------------------------------ what schedulers call
    def get_trials(self) -> list[SimTrial]:
        """Every trial so far, in creation order."""
        return self.trials

    def get_live_trials(self) -> list[SimTrial]:
        """Trials that are neither terminated nor errored."""
        return [t for t in self.trials if t.status not in (Trial.TERMINATED, Trial.ERROR)]

    def stop_trial(self, trial: SimTrial) -> None:
        """Tune's ``stop_trial``: tell the scheduler and the searcher, then free the worker."""
        if trial.status in (Trial.ERROR, Trial.TERMINATED):
            return
        if trial.status in (Trial.PENDING, Trial.PAUSED):
            self.scheduler.on_trial_remove(self, trial)
            self.searcher.on_trial_complete(trial.trial_id)
        else:
            self.scheduler.on_trial_complete(self, trial, trial.last_result)
            self.searcher.on_trial_complete(trial.trial_id, result=trial.last_result)
        trial.status = Trial.TERMINATED
        self._running.discard(trial.trial_id)

    def pause_trial(self, trial: SimTrial, should_checkpoint: bool = True) -> None:
        """Free the worker; the trial keeps its epochs and resumes from them."""
        trial.status = Trial.PAUSED
        self._running.discard(trial.trial_id)

    # ------------------------------------------------------------------ the loop
    def run(self) -> list[Event]:
        """Run until the epoch budget is spent (or nothing is left to run); return every reported epoch."""
        self._fill()
        while self._queue and len(self.events) < self.budget:
            clock, _, trial_id = heapq.heappop(self._queue)
            self.clock = clock
            self._on_epoch(self.by_id[trial_id])
            self._fill()
        for trial in list(self.trials):
            if trial.status == Trial.RUNNING:
                self.stop_trial(trial)
        return self.events

    def _fill(self) -> None:
        """Give every free worker a trial, as long as epochs are left to start."""
        while len(self._running) < self.workers and self.started_epochs < self.budget:
            trial = self.scheduler.choose_trial_to_run(self)
            if trial is None and self._add_trial():
                trial = self.scheduler.choose_trial_to_run(self)
            if trial is None:
                return
            trial.status = Trial.RUNNING
            self._running.add(trial.trial_id)
            self._schedule_epoch(trial)

    def _add_trial(self) -> bool:
        if self.search_alg.finished:
            return False
        trial_id = f"{len(self.trials):05d}"
        config = self.searcher.suggest(trial_id)
        if config is None:
            return False
        if config == "FINISHED":  # Searcher.FINISHED
            self.search_alg.finished = True
            return False
        trial = SimTrial(trial_id, dict(config), self.curve_fn(config))
        self.trials.append(trial)
        self.by_id[trial_id] = trial
        self.scheduler.on_trial_add(self, trial)
        return True

    def _schedule_epoch(self, trial: SimTrial) -> None:
        if self.started_epochs >= self.budget:
            self.stop_trial(trial)
            return
        self.started_epochs += 1
        self._seq += 1
        duration = float(trial.curve.epoch_s[trial.epochs])
        heapq.heappush(self._queue, (self.clock + duration, self._seq, trial.trial_id))

    def _on_epoch(self, trial: SimTrial) -> None:
        trial.epochs += 1
        epoch = trial.epochs
        accuracy = float(trial.curve.accuracy[epoch - 1])
        result = {
            METRIC: accuracy,
            VAL_LOSS: float(trial.curve.cross_entropy[epoch - 1]),
            EPOCH: epoch,
            "training_iteration": epoch,
            "time_total_s": float(trial.curve.epoch_s[:epoch].sum()),
            "trial_id": trial.trial_id,
        }
        self.events.append(Event(trial.trial_id, epoch, self.clock, accuracy))
        decision = self.scheduler.on_trial_result(self, trial, result)
        if decision != TrialScheduler.STOP:
            self.searcher.on_trial_result(trial.trial_id, result)
        trial.last_result = result
        if trial.status != Trial.RUNNING:  # the scheduler stopped it while processing its bracket
            return
        if decision == TrialScheduler.STOP or epoch >= self.max_epochs:
            self.stop_trial(trial)
        elif decision == TrialScheduler.PAUSE:
            self.pause_trial(trial)
        else:
            self._schedule_epoch(trial)
