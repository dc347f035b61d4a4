"""The search's parts, built from an experiment config: Optuna searcher, ASHA scheduler, bound trainable and Tuner."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from muratune.config import HYPERPARAMETERS, RUNG_METRICS, ExperimentConfig
from muratune.constants import EPOCH, METRIC, MODE, VAL_AUC
from muratune.errors import UserError
from muratune.layout import TIME_BUDGET_REACHED, experiment_dir, optuna_storage_url, trial_dirname, trials_storage
from muratune.search.resources import trial_resources

# The experiment config reaches every trial through tune.with_parameters under this keyword.
EXPERIMENT_CONFIG_KEY = "experiment_config"


def create_searcher(
    config: ExperimentConfig,
    prune_stopped: bool | None = None,
    storage: str | None | bool = True,
    scheduler: Any = None,
) -> Any:
    """Optuna (TPE or random) behind a concurrency limit, with ASHA-stopped trials recorded as PRUNED.

    Args:
        config: the experiment config (its ``optuna``, ``budget`` and ``resources`` sections).
        prune_stopped: override ``optuna.prune_stopped_trials`` (benchmarks compare both).
        storage: True for the experiment's study storage (`optuna_storage_url`), None or False for an
            in-memory study, or a database URL.
        scheduler: the search's scheduler; a `PromotionASHA` gets the limit that does not count paused trials.
    """
    import optuna
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    from muratune.search.optuna_search import PrunedAwareOptunaSearch
    from muratune.search.promotion import PromotionASHA, PromotionLimiter

    if not config.space.searched():
        # Nothing to search (one fixed point, e.g. a paper's setup): repeat it num_samples times.
        return BasicVariantGenerator(max_concurrent=config.resources.max_concurrent_trials)
    sampler = create_sampler(config)
    url = optuna_storage_url(config) if storage is True else (storage or None)
    searcher = PrunedAwareOptunaSearch(
        metric=METRIC,
        mode=MODE,
        sampler=sampler,
        storage=optuna.storages.RDBStorage(url) if url else None,
        study_name=config.name,
        max_epochs=config.budget.max_epochs,
        prune_stopped=config.optuna.prune_stopped_trials if prune_stopped is None else prune_stopped,
    )
    max_concurrent = config.resources.max_concurrent_trials
    if isinstance(scheduler, PromotionASHA):
        return PromotionLimiter(searcher, max_concurrent, scheduler)
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)


def create_sampler(config: ExperimentConfig) -> Any:
    """The Optuna sampler ``optuna.sampler`` names: TPE, TPE on ASHA's rungs (`RungModelSampler`) or random."""
    import optuna

    from muratune.search.rung_sampler import RungModelSampler, asha_levels

    opt, budget = config.optuna, config.budget
    tpe: dict[str, Any] = {"seed": opt.seed, "multivariate": opt.multivariate, "constant_liar": opt.constant_liar}
    startup = opt.startup_trials(config.resources.max_concurrent_trials)
    if opt.sampler == "tpe":
        return optuna.samplers.TPESampler(n_startup_trials=startup, **tpe)
    if opt.sampler == "rung-tpe":
        if budget.scheduler == "none":
            levels = [budget.max_epochs]
        else:
            levels = asha_levels(budget.grace_period, budget.reduction_factor, budget.max_epochs)
        return RungModelSampler(
            levels,
            opt.rung_min_trials,
            n_startup_trials=startup,
            stopped_as_bad=opt.rung_stopped_as_bad,
            startup_on_first_rung=budget.scheduler == "asha-promotion",
            startup=opt.startup,
            **tpe,
        )
    return optuna.samplers.RandomSampler(seed=opt.seed)


def create_scheduler(config: ExperimentConfig) -> Any:
    """ASHA over epochs, ranking by ``budget.rung_metric``: stopping or promotion type (or FIFO for ``none``)."""
    from ray.tune.schedulers import FIFOScheduler

    from muratune.search.asha import RungMetricASHA
    from muratune.search.promotion import PromotionASHA

    budget = config.budget
    if budget.scheduler == "none":
        return FIFOScheduler()
    if budget.scheduler == "asha-promotion":
        return PromotionASHA(
            budget.rung_metric,
            RUNG_METRICS[budget.rung_metric],
            budget.max_epochs,
            budget.grace_period,
            budget.reduction_factor,
            max_concurrent=config.resources.max_concurrent_trials,
        )
    return RungMetricASHA(
        metric=budget.rung_metric,
        mode=RUNG_METRICS[budget.rung_metric],
        time_attr="training_iteration",
        max_t=budget.max_epochs,
        grace_period=budget.grace_period,
        reduction_factor=budget.reduction_factor,
        brackets=budget.brackets,
    )


def bind_trainable(config: ExperimentConfig, trainable: Callable | None = None) -> Any:
    """The trial function with the experiment config bound (kept out of the searched hyperparameters) and resources."""
    from ray import tune

    from muratune.trainables.distributed import ddp_tune_trainable
    from muratune.trainables.trial import tune_trainable

    if trainable is None:
        trainable = ddp_tune_trainable if config.resources.workers_per_trial > 1 else tune_trainable
    bound = tune.with_parameters(trainable, **{EXPERIMENT_CONFIG_KEY: config.model_dump(mode="json")})
    return tune.with_resources(bound, trial_resources(config, data_parallel=trainable is ddp_tune_trainable))


def _trial_dirname(trial: Any) -> str:
    return trial_dirname(trial.trial_id)


def run_config(
    config: ExperimentConfig, name: str, storage_path: str, checkpoint_config: Any, reporter: Any, **settings: Any
) -> Any:
    """The RunConfig a search and a refit share: where the run is stored, its failure handling and progress table.

    Args:
        config: the experiment config (its ``failure`` section).
        name: the Tune run's name, under ``storage_path``.
        storage_path: where Tune stores the run.
        checkpoint_config: which checkpoints each trial keeps.
        reporter: the console progress table.
        **settings: further ``RunConfig`` settings (``stop``, ``callbacks``, ``verbose``).
    """
    from ray import tune

    return tune.RunConfig(
        name=name,
        storage_path=storage_path,
        failure_config=tune.FailureConfig(max_failures=config.failure.max_failures),
        checkpoint_config=checkpoint_config,
        progress_reporter=reporter,
        **settings,
    )


def time_budget_reached(exp_dir: Path) -> bool:
    """Whether ``budget.time_budget_s`` ended the experiment's search (see `TimeBudget`)."""
    return (exp_dir / TIME_BUDGET_REACHED).exists()


def search_stopper(config: ExperimentConfig, stop: Any = None) -> Any:
    """The search's stopping conditions: ``stop`` and the time budget, if any."""
    from ray.tune.stopper import CombinedStopper

    from muratune.search.stopper import TimeBudget

    if config.budget.time_budget_s is None:
        return stop
    mark = experiment_dir(config) / TIME_BUDGET_REACHED
    budget = TimeBudget(config.budget.time_budget_s, mark, config.debug.time_budget_from_first_report)
    return budget if stop is None else CombinedStopper(stop, budget)


def create_tuner(
    config: ExperimentConfig,
    trainable: Callable | None = None,
    searcher: Any = None,
    stop: Any = None,
    verbose: int = 1,
) -> Any:
    """Assemble the Tuner: param space, searcher, scheduler, storage, failure and checkpoint settings.

    Args:
        config: the experiment config.
        trainable: the trial function (default: muratune's).
        searcher: replaces the Optuna searcher (benchmarks).
        stop: a Tune stopping condition (e.g. a shared epoch budget).
        verbose: Tune's console verbosity.
    """
    from ray import tune

    from muratune.search.space import create_search_space
    from muratune.search.tracking import create_mlflow_callback

    storage_path, name = trials_storage(config)
    mlflow_callback = create_mlflow_callback(config, experiment_dir(config))
    scheduler = create_scheduler(config)
    reporter = tune.CLIReporter(
        metric_columns={EPOCH: "epoch", METRIC: "val_kappa", VAL_AUC: "val_auc"},
        parameter_columns=list(HYPERPARAMETERS),
        max_report_frequency=30,
        # Ray's table cannot sort trials the time budget ended before they reported (None < None): unsorted then.
        sort_by_metric=config.budget.time_budget_s is None,
    )
    return tune.Tuner(
        bind_trainable(config, trainable),
        param_space=create_search_space(config.space),
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode=MODE,
            search_alg=_search_alg(config, scheduler, searcher),
            scheduler=scheduler,
            num_samples=config.budget.num_samples,
            reuse_actors=True,
            trial_dirname_creator=_trial_dirname,
            trial_name_creator=_trial_dirname,
        ),
        run_config=run_config(
            config,
            name,
            storage_path,
            tune.CheckpointConfig(
                num_to_keep=config.checkpoint.num_to_keep,
                checkpoint_score_attribute=METRIC,
                checkpoint_score_order=MODE,
            ),
            reporter,
            callbacks=[mlflow_callback] if mlflow_callback is not None else None,
            stop=search_stopper(config, stop),
            verbose=verbose,
        ),
    )


def _search_alg(config: ExperimentConfig, scheduler: Any, searcher: Any) -> Any:
    """The config's searcher, or ``searcher`` (benchmarks) if the scheduler can work with it."""
    from muratune.search.promotion import PromotionASHA, PromotionLimiter

    if searcher is None:
        return create_searcher(config, scheduler=scheduler)
    if isinstance(scheduler, PromotionASHA) and not isinstance(searcher, PromotionLimiter):
        # Another limit counts paused trials as live: it would stop suggesting, and the search would never end.
        raise ValueError("budget.scheduler asha-promotion needs its searcher behind a PromotionLimiter")
    return searcher


def restore_tuner(config: ExperimentConfig, trainable: Callable | None = None) -> Any:
    """Restore an interrupted search: unfinished trials resume from their checkpoints, errored ones are kept."""
    from ray import tune

    storage_path, name = trials_storage(config)
    path = f"{storage_path}/{name}"
    if not tune.Tuner.can_restore(path):
        raise UserError(f"{path}: no restorable search state here")
    return tune.Tuner.restore(
        path, trainable=bind_trainable(config, trainable), resume_unfinished=True, resume_errored=False
    )
