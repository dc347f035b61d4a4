"""A sampler that fits Optuna's TPE on one ASHA rung's values (BOHB's and SMAC's model of the highest full rung)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Container, Sequence
from typing import Any, Literal

from optuna.distributions import BaseDistribution
from optuna.exceptions import ExperimentalWarning
from optuna.samplers import BaseSampler, QMCSampler, RandomSampler, TPESampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

_MODELLED = (TrialState.COMPLETE, TrialState.PRUNED)
_QMC_LOGGER = "optuna.samplers._qmc"


class _FlatSpaceFilter(logging.Filter):
    """Drops QMCSampler's warning that the space looks conditional. muratune's spaces are flat, but Optuna's ask sets
    a single-valued parameter (a one-backbone search) before sampling, so the trial being created looks like one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "does not include any conditions" not in record.getMessage()


def asha_levels(grace_period: int, reduction_factor: float, max_epochs: int) -> list[int]:
    """Epochs at which ASHA compares trials (Ray's rungs, grace x rf^k below ``max_epochs``) and ``max_epochs``."""
    levels, epoch = {max_epochs}, float(grace_period)
    while epoch < max_epochs:
        levels.add(int(epoch))
        epoch *= reduction_factor
    return sorted(levels)


def rung_value(trial: FrozenTrial, level: int, top: int) -> float | None:
    """The trial's value at epoch ``level`` (its intermediate value; a finished full trial's value at the top)."""
    value = trial.intermediate_values.get(level)
    if value is None and level == top and trial.state == TrialState.COMPLETE:
        value = trial.value
    return value


class RungView:
    """The study as TPE sees it: each trial observed at ``level`` is COMPLETE with its value there.

    Trials still running short of ``level`` stay RUNNING (pending, for the constant liar). Trials that stopped
    short of it (PRUNED earlier) are left out, as BOHB fits each budget's model on that budget's observations
    only, or with ``stopped_as_bad`` shown as RUNNING too: TPE with the constant liar then counts them in its
    "bad" group without changing the size of its "good" one. Failed trials are left out. Everything else
    (directions, storage) is the real study's.
    """

    def __init__(self, study: Study, level: int, top: int, stopped_as_bad: bool = False) -> None:
        self._study = study
        self._trials: list[FrozenTrial] = []
        for trial in study._get_trials(deepcopy=False, states=(*_MODELLED, TrialState.RUNNING)):
            value = rung_value(trial, level, top)
            if value is not None:
                self._trials.append(_as_complete(trial, value))
            elif trial.state == TrialState.RUNNING:
                self._trials.append(trial)
            elif stopped_as_bad and trial.state == TrialState.PRUNED:
                self._trials.append(_as_state(trial, TrialState.RUNNING, None))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None, use_cache: bool = False
    ) -> list[FrozenTrial]:
        return [t for t in self._trials if states is None or t.state in states]

    def get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        """The view's trials (Optuna's public name for `_get_trials`)."""
        return self._get_trials(deepcopy, states)


def _as_complete(trial: FrozenTrial, value: float) -> FrozenTrial:
    return _as_state(trial, TrialState.COMPLETE, value)


def _as_state(trial: FrozenTrial, state: TrialState, value: float | None) -> FrozenTrial:
    return FrozenTrial(
        number=trial.number,
        state=state,
        value=value,
        datetime_start=trial.datetime_start,
        datetime_complete=trial.datetime_complete,
        params=trial.params,
        distributions=trial.distributions,
        user_attrs=trial.user_attrs,
        system_attrs=trial.system_attrs,
        intermediate_values=trial.intermediate_values,
        trial_id=trial._trial_id,
    )


class RungModelSampler(BaseSampler):
    """Optuna's TPESampler, fitted on the values at the highest rung that has ``min_trials`` observations.

    Under ASHA most trials stop early; TPE's own split ranks COMPLETE trials first, then PRUNED ones by how far
    they got, so its "good" set mixes fidelities. This gives the library's TPE a `RungView` of the study instead:
    the values at one epoch, the highest of ``levels`` (ASHA's rungs and the full run) that ``min_trials`` trials
    have reached (Falkner et al. 2018, BOHB; SMAC3's multi-fidelity facade). Below ``n_startup_trials`` finished
    trials it samples at random (or from a Sobol sequence: ``startup``); while no level has ``min_trials`` values
    (a small search), TPE sees the study as it is, as plain TPE would. The study itself is untouched.

    Args:
        levels: epochs at which trials are compared (see `asha_levels`); the last is a full run.
        min_trials: observations a level needs before TPE is fitted on it.
        stopped_as_bad: show TPE the trials stopped short of the level as bad ones (see `RungView`).
        n_startup_trials: finished (COMPLETE or PRUNED) trials before the model is used.
        startup_on_first_rung: count trials with a value at the first level towards ``n_startup_trials`` even while
            they run: under promotion-type ASHA they wait, paused and RUNNING in the study, at that rung.
        startup: how start-up trials are drawn: ``random``, or ``sobol`` (Optuna's `QMCSampler`, a scrambled Sobol
            sequence, which spreads them over the space more evenly; its first trial is random).
        seed: seeds TPE, the random sampler and the Sobol scrambling.
        **tpe_kwargs: passed to `TPESampler` (``multivariate``, ``constant_liar``, ...).
    """

    def __init__(
        self,
        levels: Sequence[int],
        min_trials: int,
        n_startup_trials: int = 10,
        seed: int | None = None,
        stopped_as_bad: bool = False,
        startup_on_first_rung: bool = False,
        startup: Literal["random", "sobol"] = "random",
        **tpe_kwargs: Any,
    ) -> None:
        self.levels = sorted(levels)
        self.startup_on_first_rung = startup_on_first_rung
        self.stopped_as_bad = stopped_as_bad
        self.min_trials = min_trials
        self.n_startup_trials = n_startup_trials
        self._tpe = TPESampler(seed=seed, n_startup_trials=0, **tpe_kwargs)
        self._random = RandomSampler(seed=seed)
        self._sobol: QMCSampler | None = None
        if startup == "sobol":
            qmc_logger = logging.getLogger(_QMC_LOGGER)
            if not any(isinstance(f, _FlatSpaceFilter) for f in qmc_logger.filters):
                qmc_logger.addFilter(_FlatSpaceFilter())
            with warnings.catch_warnings():  # QMCSampler is marked experimental since Optuna 3.0
                warnings.simplefilter("ignore", ExperimentalWarning)
                self._sobol = QMCSampler(
                    scramble=True,
                    seed=seed,
                    independent_sampler=self._random,
                    warn_asynchronous_seeding=False,  # one searcher draws every trial, on the driver
                    warn_independent_sampling=False,
                )
        self._view: tuple[int, Study | None] | None = None  # (trial number, view) for the trial being sampled

    def model_level(self, study: Study) -> int | None:
        """The highest level with ``min_trials`` values, which TPE is fitted on; None while there is none."""
        trials = study._get_trials(deepcopy=False, states=(*_MODELLED, TrialState.RUNNING))
        for level in reversed(self.levels):
            if sum(rung_value(t, level, self.levels[-1]) is not None for t in trials) >= self.min_trials:
                return level
        return None

    def started_up(self, study: Study) -> bool:
        """Whether enough trials finished (or reached the first level: ``startup_on_first_rung``) to use the model."""
        if not self.startup_on_first_rung:
            return len(study._get_trials(deepcopy=False, states=_MODELLED, use_cache=True)) >= self.n_startup_trials
        trials = study._get_trials(deepcopy=False, states=(*_MODELLED, TrialState.RUNNING))
        observed = [t for t in trials if t.state != TrialState.RUNNING or self.levels[0] in t.intermediate_values]
        return len(observed) >= self.n_startup_trials

    def _model_study(self, study: Study, trial: FrozenTrial) -> Study | None:
        """What TPE sees for this trial: the rung view, the study itself (no level full enough), None (random)."""
        if self._view is None or self._view[0] != trial.number:
            view: Study | None = None
            if self.started_up(study):
                level = self.model_level(study)
                view = study
                if level is not None:
                    view = RungView(study, level, self.levels[-1], self.stopped_as_bad)  # type: ignore[assignment]
            self._view = (trial.number, view)
        return self._view[1]

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        """The Sobol sequence's space while starting up (``startup: sobol``); else TPE's (empty unless
        ``multivariate``), inferred on the real study."""
        if self._sobol is not None and self._model_study(study, trial) is None:
            return self._sobol.infer_relative_search_space(study, trial)
        return self._tpe.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        """Joint sampling (multivariate TPE) on the rung view; the next Sobol point while starting up."""
        view = self._model_study(study, trial)
        if not search_space:
            return {}
        if view is None:
            return {} if self._sobol is None else self._sobol.sample_relative(study, trial, search_space)
        return self._tpe.sample_relative(view, trial, search_space)

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        """One parameter from TPE on the rung view, or at random before the model is used."""
        view = self._model_study(study, trial)
        if view is None:
            return self._random.sample_independent(study, trial, param_name, param_distribution)
        return self._tpe.sample_independent(view, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        """Forget the previous trial's view."""
        self._view = None
        self._tpe.before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        """Pass the finished trial on to TPE."""
        self._tpe.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        """Reseed TPE, the random sampler and the Sobol sequence."""
        self._tpe.reseed_rng()
        self._random.reseed_rng()
        if self._sobol is not None:
            self._sobol.reseed_rng()
