"""The search methods the scale benchmark compares, each a Ray searcher and scheduler built for LCBench.

``muratune``, ``random-asha`` and ``random`` come from muratune's own factories, given an `ExperimentConfig` as
``muratune search`` would build it (LCBench's 50 trained epochs; the space from `bench.lcbench.SPACE_YAML`):
muratune's defaults (promotion-type ASHA, muratune/search/promotion.py), random search with Ray's stopping-type ASHA,
and random search alone. The others are Ray's stock classes with their own defaults, the anchors of
bench/lcbench/anchors.py, ``muratune-stopping`` (muratune's defaults before promotion-type ASHA: ``budget.scheduler:
asha``) and ``random-asha-promotion`` (random search with muratune's promotion-type ASHA).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from bench.lcbench.anchors import ANCHORS, build_anchor
from bench.lcbench.surrogate import MAX_EPOCHS, param_space
from muratune.config import ExperimentConfig, load_config
from muratune.constants import METRIC, MODE

# muratune's factories: the one place to change when the search module is split (issue 17).
from muratune.search.factories import create_scheduler, create_searcher

# muratune's searchers under the scheduler muratune does not default to (issue 29's comparisons).
SCHEDULER_SWAPPED = ("muratune-stopping", "random-asha-promotion")
METHODS = (
    "muratune",
    "stock-optuna-asha",
    "random-asha",
    "random",
    "bohb",
    "optuna-hyperband",
    *ANCHORS,
    *SCHEDULER_SWAPPED,
)
# What the benchmark sets on muratune's defaults: the task's epochs, and the rung metric (LCBench has no AUC, so ASHA's
# rungs rank by the search metric's key, which carries LCBench's validation accuracy; ``--set`` may change it).
BENCH_VALUES = {"budget.max_epochs": MAX_EPOCHS}
BENCH_OVERRIDES = [f"budget.rung_metric={METRIC}"]


def bench_config(method: str, seed: int, workers: int, overrides: list[str] | None = None) -> ExperimentConfig:
    """The config ``muratune search`` would get for this method; ``overrides`` apply to the muratune methods."""
    values: dict[str, Any] = {
        **BENCH_VALUES,
        "name": f"lcbench-{method}-s{seed}",
        "resources.max_concurrent_trials": workers,
        "optuna.seed": seed,
    }
    if method == "random-asha":
        values.update({"optuna.sampler": "random", "budget.scheduler": "asha"})
    elif method == "random-asha-promotion":
        values.update({"optuna.sampler": "random", "budget.scheduler": "asha-promotion"})
    elif method == "random":
        values.update({"optuna.sampler": "random", "budget.scheduler": "none"})
    elif method == "muratune-stopping":
        values["budget.scheduler"] = "asha"
    candidate = list(overrides or []) if method.startswith("muratune") else []
    return load_config(None, overrides=[*BENCH_OVERRIDES, *candidate], values=values)


def build_method(
    method: str,
    seed: int,
    workers: int,
    overrides: list[str] | None = None,
    set_space: bool = True,
    budget: int = 30 * MAX_EPOCHS,
) -> tuple[Any, Any]:
    """Return (searcher, scheduler) for ``method``.

    Args:
        method: one of `METHODS`.
        seed: seeds the sampler (and numpy's and Python's global generators, which Ray's schedulers draw from).
        workers: concurrent trials.
        overrides: ``key=value`` settings for muratune's config (``--set``), to compare candidate defaults.
        set_space: set metric, mode and LCBench's space as a Tuner does (the simulation); False for a real Tuner.
        budget: the search's epochs (the anchors size their phases or initial designs by it).
    """
    random.seed(seed)
    np.random.seed(seed)  # ASHA draws each trial's bracket from numpy's global generator
    if method in ("muratune", "random-asha", "random", *SCHEDULER_SWAPPED):
        config = bench_config(method, seed, workers, overrides)
        scheduler = create_scheduler(config)
        # Nothing reads the study back from a database here: an in-memory Optuna study per search.
        searcher = create_searcher(config, storage=None, scheduler=scheduler)
    elif method == "stock-optuna-asha":
        searcher, scheduler = _stock_optuna_asha(seed, workers)
    elif method == "bohb":
        searcher, scheduler = _bohb(seed, workers)
    elif method == "optuna-hyperband":
        searcher, scheduler = _optuna_hyperband(seed, workers)
    elif method in ANCHORS:
        searcher, scheduler = build_anchor(method, seed, workers, budget)
    else:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if set_space:
        searcher.set_search_properties(METRIC, MODE, param_space())
        scheduler.set_search_properties(METRIC, MODE)
    return searcher, scheduler


def _stock_optuna_asha(seed: int, workers: int) -> tuple[Any, Any]:
    """Ray's OptunaSearch (TPE, Optuna's defaults) and Ray's ASHA (its defaults), as Ray's docs pair them."""
    import optuna
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(metric=METRIC, mode=MODE, sampler=optuna.samplers.TPESampler(seed=seed))
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=MAX_EPOCHS)
    return ConcurrencyLimiter(searcher, max_concurrent=workers), scheduler


def _bohb(seed: int, workers: int) -> tuple[Any, Any]:
    """Ray's TuneBOHB and HyperBandForBOHB (reduction factor 3, Ray's default)."""
    from ray.tune.schedulers import HyperBandForBOHB
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.bohb import TuneBOHB

    searcher = TuneBOHB(metric=METRIC, mode=MODE, seed=seed)
    scheduler = HyperBandForBOHB(time_attr="training_iteration", max_t=MAX_EPOCHS)
    return ConcurrencyLimiter(searcher, max_concurrent=workers), scheduler


def _optuna_hyperband(seed: int, workers: int) -> tuple[Any, Any]:
    """Optuna's TPE (its defaults) with Optuna's HyperbandPruner (reduction factor 3) from 1 to 50 epochs."""
    import optuna
    from ray.tune.search import ConcurrencyLimiter

    from bench.lcbench.optuna_pruner import OptunaPrunerScheduler, PrunerOptunaSearch

    pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=MAX_EPOCHS, reduction_factor=3)
    searcher = ConcurrencyLimiter(
        PrunerOptunaSearch(
            metric=METRIC,
            mode=MODE,
            sampler=optuna.samplers.TPESampler(seed=seed),
            max_epochs=MAX_EPOCHS,
            pruner=pruner,
        ),
        max_concurrent=workers,
    )
    return searcher, OptunaPrunerScheduler(searcher, METRIC)
