"""The field's multi-fidelity optimisers as anchors (``dehb``, ``smac-hyperband``, ``one-epoch``), as Ray searchers.

Each anchor decides how many epochs a configuration gets. `FidelitySearcher.suggest` asks its optimiser (DEHB's and
SMAC3's own ``ask()``) for a configuration and a fidelity, and maps the pair onto one Ray trial that trains from
scratch; `EpochStopScheduler` stops that trial once it has trained the asked epochs, and the trial's accuracy there
goes back through the optimiser's own ``tell()`` (as the error, 1 - accuracy, which both minimise). A configuration
the optimiser promotes to a higher fidelity is a new trial, so its lower-fidelity epochs are trained, and counted,
again. DEHB's and SMAC's Hyperband budgets from 1 to 50 epochs with eta 3 are 1.85, 5.56, 16.7 and 50, rounded to
2, 6, 17 and 50 epochs. A trial cut short by the end of the budget is never told.

``one-epoch`` is the baseline of Egele et al. 2023 ("Is One Epoch All You Need for Multi-Fidelity Hyperparameter
Optimization?", arXiv 2307.15422), which no library ships: random configurations trained `ONE_EPOCH_K` epochs for
`ONE_EPOCH_SHARE` of the budget, then, once every one of those has reported, the best of them trained fully (again
from scratch) in order of their short-run accuracy until the budget runs out.
"""

from __future__ import annotations

import logging
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher

from bench.lcbench.surrogate import MAX_EPOCHS, param_space
from muratune.constants import METRIC, MODE
from muratune.errors import UserError

ANCHORS = ("dehb", "smac-hyperband", "one-epoch")
ETA = 3  # DEHB's and SMAC's reduction factor (both libraries' default)
ONE_EPOCH_K = 1  # epochs of a first-phase trial
ONE_EPOCH_SHARE = 0.25  # the share of the budget the first phase spends


def _library(name: str, install: str) -> Any:
    """Import an anchor's library, or say in one line how to install it."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise UserError(f"--methods: the {name} anchor needs the {name} package ({install}): {err}") from None


def config_space(seed: int) -> Any:
    """LCBench's space as a ConfigSpace space (Ray's own converter, as TuneBOHB uses it), seeded."""
    from ray.tune.search.bohb import TuneBOHB

    space = TuneBOHB.convert_search_space(param_space())
    space.seed(seed)
    return space


class FidelitySearcher(Searcher, ABC):
    """A Ray searcher whose optimiser picks each trial's configuration and epochs (`epochs`, by trial id)."""

    def __init__(self) -> None:
        super().__init__(metric=METRIC, mode=MODE)
        self.epochs: dict[str, int] = {}
        self._asked: dict[str, Any] = {}

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        """The space is LCBench's, set at construction; only metric and mode are taken."""
        self._metric, self._mode = metric or self._metric, mode or self._mode
        return True

    def suggest(self, trial_id: str) -> dict | None:
        """The optimiser's next configuration, or None while it waits for results."""
        asked = self._ask()
        if asked is None:
            return None
        handle, config, epochs = asked
        self._asked[trial_id], self.epochs[trial_id] = handle, epochs
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Tell the optimiser the accuracy at the asked epochs (a trial cut short before them is not told)."""
        handle = self._asked.pop(trial_id, None)
        if handle is None or error or not result or result.get("training_iteration") != self.epochs[trial_id]:
            return
        self._tell(handle, float(result[METRIC]), self.epochs[trial_id])

    @abstractmethod
    def _ask(self) -> tuple[Any, dict, int] | None:
        """The optimiser's next (handle, configuration, epochs), or None when it has nothing to ask."""

    @abstractmethod
    def _tell(self, handle: Any, accuracy: float, epochs: int) -> None:
        """Tell the optimiser the accuracy its ask reached at ``epochs``."""


class EpochStopScheduler(FIFOScheduler):
    """Stop each trial once it has trained the epochs its `FidelitySearcher` asked for.

    Args:
        searcher: the (possibly ConcurrencyLimiter-wrapped) `FidelitySearcher`.
    """

    def __init__(self, searcher: Any) -> None:
        super().__init__()
        self._searcher: FidelitySearcher = getattr(searcher, "searcher", searcher)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        """STOP at the asked epochs."""
        epochs = self._searcher.epochs.get(trial.trial_id)
        if epochs is not None and int(result.get("training_iteration", 0) or 0) >= epochs:
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE


class DehbSearcher(FidelitySearcher):
    """DEHB (``dehb`` package) through its ask/tell interface, fidelities 1 to ``max_epochs`` epochs."""

    def __init__(self, seed: int, max_epochs: int = MAX_EPOCHS) -> None:
        DEHB = _library("dehb", "pip install --no-deps dehb==0.1.2 loguru (it pins numpy<2)").DEHB
        super().__init__()
        self._folder = tempfile.TemporaryDirectory(prefix="dehb-")  # DEHB writes its log (and state) somewhere
        self.optimiser = DEHB(
            cs=config_space(seed),
            min_fidelity=1,
            max_fidelity=max_epochs,
            eta=ETA,
            n_workers=1,  # no Dask client: this process asks and tells; the simulated workers train
            seed=seed,
            output_path=self._folder.name,
            save_freq="end",
            log_level="WARNING",
        )

    def _ask(self) -> tuple[Any, dict, int]:
        job = self.optimiser.ask()
        return job, dict(job["config"]), max(1, round(float(job["fidelity"])))

    def _tell(self, handle: Any, accuracy: float, epochs: int) -> None:
        self.optimiser.tell(handle, {"fitness": 1.0 - accuracy, "cost": float(epochs)})


class SmacSearcher(FidelitySearcher):
    """SMAC3's MultiFidelityFacade with its Hyperband intensifier, through ask/tell, budgets 1 to ``max_epochs``.

    Args:
        seed: the scenario's seed.
        trials: the scenario's ``n_trials`` (an upper bound: the budget's epochs); it sizes SMAC's initial design.
        max_epochs: the highest budget.
    """

    def __init__(self, seed: int, trials: int, max_epochs: int = MAX_EPOCHS) -> None:
        smac = _library("smac", "pip install -e .[bench]")
        MultiFidelityFacade, Scenario = smac.MultiFidelityFacade, smac.Scenario
        super().__init__()
        self._folder = tempfile.TemporaryDirectory(prefix="smac-")
        scenario = Scenario(
            config_space(seed),
            deterministic=True,
            n_trials=trials,
            min_budget=1,
            max_budget=max_epochs,
            seed=seed,
            output_directory=Path(self._folder.name),
        )
        self.optimiser = MultiFidelityFacade(
            scenario,
            target_function=_never_called,
            intensifier=MultiFidelityFacade.get_intensifier(scenario, eta=ETA),
            overwrite=True,
            logging_level=logging.WARNING,
        )

    def _ask(self) -> tuple[Any, dict, int]:
        info = self.optimiser.ask()
        if info.budget is None:  # the multi-fidelity facade always sets a budget
            raise RuntimeError("SMAC asked for a trial without a budget")
        return info, dict(info.config), max(1, round(float(info.budget)))

    def _tell(self, handle: Any, accuracy: float, epochs: int) -> None:
        from smac.runhistory.dataclasses import TrialValue

        self.optimiser.tell(handle, TrialValue(cost=1.0 - accuracy), save=False)


def _never_called(config: Any, seed: int = 0, budget: float = 0.0) -> float:
    """SMAC's facade wants a target function; with ask/tell the simulation trains instead."""
    raise RuntimeError("SMAC is driven through ask/tell here")


class OneEpochSearcher(FidelitySearcher):
    """Egele et al.'s one-epoch baseline (see the module docstring), sampling Ray's space with ``seed``.

    Args:
        seed: seeds the random sampling.
        budget: the search's epochs; the first phase gets ``share`` of it in ``k``-epoch trials.
        k: epochs of a first-phase trial.
        share: the first phase's share of the budget.
        max_epochs: epochs of a full trial.
    """

    def __init__(
        self, seed: int, budget: int, k: int = ONE_EPOCH_K, share: float = ONE_EPOCH_SHARE, max_epochs: int = MAX_EPOCHS
    ) -> None:
        super().__init__()
        self.rng = np.random.default_rng(seed)
        self.space = param_space()
        self.k, self.max_epochs = k, max_epochs
        self.first_phase = max(1, int(share * budget) // k)
        self.sampled: list[dict] = []
        self.scores: dict[int, float] = {}
        self.ranked: list[int] | None = None

    def _ask(self) -> tuple[Any, dict, int] | None:
        if len(self.sampled) < self.first_phase:
            self.sampled.append({name: domain.sample(random_state=self.rng) for name, domain in self.space.items()})
            return len(self.sampled) - 1, dict(self.sampled[-1]), self.k
        if self.ranked is None:
            if len(self.scores) < self.first_phase:
                return None  # the second phase starts once every first-phase trial has reported
            self.ranked = sorted(self.scores, key=lambda index: (-self.scores[index], index))
        if not self.ranked:
            return None
        index = self.ranked.pop(0)
        return None, dict(self.sampled[index]), self.max_epochs

    def _tell(self, handle: Any, accuracy: float, epochs: int) -> None:
        if handle is not None:
            self.scores[handle] = accuracy


def build_anchor(method: str, seed: int, workers: int, budget: int) -> tuple[Any, Any]:
    """Return (searcher, scheduler) for one of `ANCHORS`; the searcher never has more than ``workers`` trials out."""
    searcher: FidelitySearcher
    if method == "dehb":
        searcher = DehbSearcher(seed)
    elif method == "smac-hyperband":
        searcher = SmacSearcher(seed, trials=budget)
    elif method == "one-epoch":
        searcher = OneEpochSearcher(seed, budget)
    else:
        raise ValueError(f"unknown anchor {method!r}; choose from {', '.join(ANCHORS)}")
    limited = ConcurrencyLimiter(searcher, max_concurrent=workers)
    return limited, EpochStopScheduler(limited)
