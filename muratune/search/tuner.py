"""Run, resume and summarise a search: Ray Tune with Optuna (TPE) as searcher and ASHA as scheduler."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from muratune.config import HYPERPARAMETERS, ExperimentConfig, dump_config
from muratune.constants import EPOCH, METRIC, MODE
from muratune.errors import UserError
from muratune.fileio import write_json, write_text

TRIALS_DIR = "trials"
RESOLVED_CONFIG = "resolved_config.yaml"
OPTUNA_DB = "optuna.db"
SUMMARY_CSV = "search_summary.csv"
CACHE_JSON = "cache.json"  # the shared cache a local search used, with the images it left out ("excluded")
SHOWN_EXCLUDED = 5  # excluded images printed by name; cache.json lists them all


@dataclass
class SearchResult:
    """What a finished (or interrupted) search left behind; ``unfinished`` trials need ``--resume``."""

    experiment_dir: Path
    summary: pd.DataFrame
    optuna_storage: str
    unfinished: int = 0


def is_remote(uri: str) -> bool:
    """True for storage URIs such as ``s3://`` or ``gs://``."""
    return "://" in uri and not uri.startswith("file://")


def experiment_dir(config: ExperimentConfig) -> Path:
    """Local experiment folder (metadata, Optuna study, summary). Trials go to ``<storage>/<name>/trials``."""
    storage = config.storage
    if is_remote(storage):
        return Path("runs") / config.name
    return Path(storage.removeprefix("file://")).expanduser().resolve() / config.name


def trials_storage(config: ExperimentConfig) -> tuple[str, str]:
    """Return (storage_path, name) for Tune's RunConfig."""
    if is_remote(config.storage):
        return f"{config.storage.rstrip('/')}/{config.name}", TRIALS_DIR
    return str(experiment_dir(config)), TRIALS_DIR


def optuna_storage_url(config: ExperimentConfig) -> str:
    """The Optuna study's storage: the configured database URL, or SQLite in the experiment folder."""
    return config.optuna.storage or f"sqlite:///{experiment_dir(config) / OPTUNA_DB}"


# ------------------------------------------------------------------------------------------- preparation
def check_experiment(config: ExperimentConfig, resume: bool, overwrite: bool) -> bool:
    """Refuse to resume a search that is not there, or to replace one without ``overwrite``; touch nothing.

    Returns:
        Whether an experiment folder already exists.
    """
    exp_dir = experiment_dir(config)
    exists = (exp_dir / RESOLVED_CONFIG).exists() or (exp_dir / TRIALS_DIR).exists()
    if resume and not (exp_dir / TRIALS_DIR).exists():
        raise UserError(f"{exp_dir}: no search to resume here (no {TRIALS_DIR}/ folder)")
    if not resume and exists and not overwrite:
        raise UserError(f"{exp_dir}: experiment already exists; pass --resume to continue it or --overwrite")
    return exists


def prepare_experiment(config: ExperimentConfig, resume: bool, overwrite: bool) -> Path:
    """Create (or check) the experiment folder and write the resolved config."""
    exp_dir = experiment_dir(config)
    exists = check_experiment(config, resume, overwrite)
    if resume:
        return exp_dir
    if exists:
        shutil.rmtree(exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    write_text(exp_dir / RESOLVED_CONFIG, dump_config(config))
    return exp_dir


def preflight(config: ExperimentConfig, local: bool = True, echo: Callable[[str], None] = print) -> dict | None:
    """Everything that can be checked before Ray starts and before the experiment folder is touched.

    Checks the space and the data root, then the data: on a local search the dataset index and every image (by
    building the shared cache, see `warm_cache`); on a cluster only the index, when the dataset is reachable from
    the driver (each node decodes its own images on first use).

    Returns:
        What `warm_cache` returns on a local search (written to ``cache.json``), else None.

    Raises:
        UserError: the space, the CSVs or an image is bad (unreadable images only without ``skip_bad_images``).
    """
    from muratune.data.index import load_index
    from muratune.search.space import validate_space

    validate_space(config)
    if not config.data.root:
        raise UserError("data.root: no dataset given; set it in the config or pass --data ROOT")
    if local:
        return warm_cache(config)
    if Path(config.data.root).expanduser().exists():
        load_index(config.data.root)
    else:
        echo(f"note: {config.data.root} is not reachable from this machine; the cluster's nodes check the data")
    return None


def warm_cache(config: ExperimentConfig) -> dict:
    """Index the dataset and build the shared cache once on the driver, so trials only open it."""
    from muratune.data.cache import build_cache
    from muratune.data.index import load_index

    index = load_index(config.data.root)
    cache = build_cache(
        index,
        config.data.image_size,
        config.data.resize_mode,
        cache_dir=config.data.cache_dir,
        skip_bad_images=config.data.skip_bad_images,
    )
    return {"cache": str(cache.path), "images": len(cache.index), "excluded": cache.excluded}


# ------------------------------------------------------------------------------------------- ray
def connect_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Connect to a cluster (``address`` or ``RAY_ADDRESS``) or start local Ray; return True if we started it."""
    import ray

    # The legacy console output honours our CLIReporter's columns; the new one prints every metric of every result.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return True


def check_cluster_resources(config: ExperimentConfig, autoscaling: bool = False, echo=print) -> None:
    """Refuse per-trial requests the cluster cannot satisfy (e.g. more GPUs per trial than it has).

    On an existing cluster (``autoscaling``) the autoscaler may still add nodes, so this only warns.
    """
    try:
        _check_resources(config)
    except UserError as err:
        if not autoscaling:
            raise
        echo(f"warning: {err}; waiting for the autoscaler to add nodes")


def _check_resources(config: ExperimentConfig) -> None:
    import ray

    total = ray.cluster_resources()
    need_gpus = config.resources.gpus_per_trial * config.resources.workers_per_trial
    if need_gpus > total.get("GPU", 0):
        raise UserError(
            f"resources.gpus_per_trial: {config.resources.gpus_per_trial} GPU(s) per trial requested, "
            f"but the cluster has {total.get('GPU', 0):g}"
        )
    res = config.resources
    if res.cpus_per_trial > total.get("CPU", 0):
        raise UserError(
            f"resources.cpus_per_trial: {res.cpus_per_trial} CPU(s) per trial requested, "
            f"but the cluster has {total.get('CPU', 0):g}"
        )
    if res.workers_per_trial > 1:
        # Each data-parallel trial holds its driver and all its workers at once; trials that only partly fit
        # would wait on each other forever (WorkerGroupStartupTimeoutError), so all concurrent ones must fit.
        per_trial = DDP_DRIVER_CPUS + res.workers_per_trial * res.cpus_per_trial
        if res.max_concurrent_trials * per_trial > total.get("CPU", 0) + 1e-9:
            fit = int(total.get("CPU", 0) // per_trial)
            raise UserError(
                f"resources.max_concurrent_trials: {res.max_concurrent_trials} data-parallel trials need "
                f"{res.max_concurrent_trials * per_trial:g} CPUs but the cluster has {total.get('CPU', 0):g}; "
                f"use at most {fit}"
            )


DDP_DRIVER_CPUS = 0.25


def trial_resources(config: ExperimentConfig) -> dict:
    """Resources of one trial's Tune actor.

    A data-parallel trial's actor only drives a TorchTrainer, whose workers request their own resources
    (``cpus_per_trial`` and ``gpus_per_trial`` each), so the actor itself takes a small CPU share.
    """
    res = config.resources
    if res.workers_per_trial <= 1:
        return {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial}
    return {"cpu": DDP_DRIVER_CPUS, "gpu": 0}


def build_searcher(config: ExperimentConfig, prune_stopped: bool | None = None) -> Any:
    """Optuna (TPE or random) behind a concurrency limit, with ASHA-stopped trials recorded as PRUNED."""
    import optuna
    from ray.tune.search import ConcurrencyLimiter

    from muratune.search.optuna_search import PrunedAwareOptunaSearch

    opt = config.optuna
    if not config.space.searched():
        from ray.tune.search import BasicVariantGenerator

        # Nothing to search (one fixed point, e.g. a paper's setup): repeat it num_samples times.
        return BasicVariantGenerator(max_concurrent=config.resources.max_concurrent_trials)
    if opt.sampler == "tpe":
        sampler = optuna.samplers.TPESampler(seed=opt.seed, n_startup_trials=opt.n_startup_trials)
    else:
        sampler = optuna.samplers.RandomSampler(seed=opt.seed)
    storage = optuna.storages.RDBStorage(optuna_storage_url(config))
    searcher = PrunedAwareOptunaSearch(
        metric=METRIC,
        mode=MODE,
        sampler=sampler,
        storage=storage,
        study_name=config.name,
        max_epochs=config.budget.max_epochs,
        prune_stopped=opt.prune_stopped_trials if prune_stopped is None else prune_stopped,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=config.resources.max_concurrent_trials)


def build_scheduler(config: ExperimentConfig) -> Any:
    """ASHA over epochs, ranking by ``budget.rung_metric`` (or FIFO when ``budget.scheduler`` is ``none``)."""
    from ray.tune.schedulers import FIFOScheduler

    from muratune.config import RUNG_METRICS
    from muratune.search.asha import RungMetricASHA

    budget = config.budget
    if budget.scheduler == "none":
        return FIFOScheduler()
    return RungMetricASHA(
        metric=budget.rung_metric,
        mode=RUNG_METRICS[budget.rung_metric],
        time_attr="training_iteration",
        max_t=budget.max_epochs,
        grace_period=budget.grace_period,
        reduction_factor=budget.reduction_factor,
    )


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def bind_trainable(config: ExperimentConfig, trainable: Callable | None = None) -> Any:
    """The trial function with the experiment settings bound (kept out of the searched config) and resources."""
    from ray import tune

    from muratune.trainables.train import tune_trainable

    if trainable is None and config.resources.workers_per_trial > 1:
        from muratune.trainables.distributed import ddp_tune_trainable

        trainable = ddp_tune_trainable
    bound = tune.with_parameters(trainable or tune_trainable, settings=config.model_dump(mode="json"))
    return tune.with_resources(bound, trial_resources(config))


def build_tuner(
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

    storage_path, name = trials_storage(config)
    trainable = bind_trainable(config, trainable)
    param_space = create_search_space(config.space)
    reporter = tune.CLIReporter(
        metric_columns={EPOCH: "epoch", METRIC: "val_kappa", "val_auc": "val_auc"},
        parameter_columns=list(HYPERPARAMETERS),
        max_report_frequency=30,
        sort_by_metric=True,
    )
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode=MODE,
            search_alg=searcher if searcher is not None else build_searcher(config),
            scheduler=build_scheduler(config),
            num_samples=config.budget.num_samples,
            time_budget_s=config.budget.time_budget_s,
            reuse_actors=True,
            trial_dirname_creator=_trial_dirname,
            trial_name_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=tune.FailureConfig(max_failures=config.failure.max_failures),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=config.checkpoint.num_to_keep,
                checkpoint_score_attribute=METRIC,
                checkpoint_score_order=MODE,
            ),
            progress_reporter=reporter,
            stop=stop,
            verbose=verbose,
        ),
    )


def restore_tuner(config: ExperimentConfig, trainable: Callable | None = None) -> Any:
    """Restore an interrupted search: unfinished trials resume from their checkpoints, errored ones are kept."""
    from ray import tune

    storage_path, name = trials_storage(config)
    path = f"{storage_path}/{name}"
    if not tune.Tuner.can_restore(path):
        raise UserError(f"{path}: no restorable search state here")
    trainable = bind_trainable(config, trainable)
    return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=False)


class _SigtermAsSigint:
    """Treat SIGTERM like Ctrl-C during a search, so Tune saves a restorable state before exiting."""

    def __enter__(self) -> _SigtermAsSigint:
        self.previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGTERM, self.previous)


# ------------------------------------------------------------------------------------------- summary
def unfinished_trials(results: Any) -> set[str]:
    """Ids of the trials that neither failed nor finished (interrupted, or cut short by ``budget.time_budget_s``).

    Tune marks the last result of a trial that ran to its end or that ASHA stopped with ``done``; an interrupted
    trial's last result lacks it, and a trial that never started has no result at all.
    """
    unfinished = set()
    for result in results:
        metrics = result.metrics or {}
        if result.error is None and not metrics.get("done", False):
            unfinished.add(str(metrics.get("trial_id") or Path(result.path).name.removeprefix("trial_")))
    return unfinished


def summarise(results: Any, config: ExperimentConfig, unfinished: set[str] | None = None) -> pd.DataFrame:
    """One row per trial: state in Optuna terms, hyperparameters, epochs, best internal-val kappa, checkpoint.

    Trials in ``unfinished`` (an interrupted search) are RUNNING, as in Optuna, rather than mistaken for pruned.
    """
    rows = []
    for result in results:
        rows.append(_summary_row(result, config, unfinished or set()))
    summary = pd.DataFrame(rows)
    if len(summary):
        summary = summary.sort_values("best_val_kappa", ascending=False, na_position="last").reset_index(drop=True)
    return summary


def _summary_row(result: Any, config: ExperimentConfig, unfinished: set[str]) -> dict:
    metrics = result.metrics or {}
    trial_id = metrics.get("trial_id") or Path(result.path).name.removeprefix("trial_")
    epochs = int(metrics.get(EPOCH, 0) or 0)
    history = result.metrics_dataframe
    best_kappa = float(history[METRIC].max()) if history is not None and METRIC in history else float("nan")
    best = result.get_best_checkpoint(METRIC, MODE) if result.best_checkpoints else None
    if result.error is not None:
        state = "FAIL"
    elif str(trial_id) in unfinished:
        state = "RUNNING"
    elif epochs >= config.budget.max_epochs:
        state = "COMPLETE"
    else:
        state = "PRUNED"
    row = {"trial_id": trial_id, "state": state, "epochs": epochs, "best_val_kappa": best_kappa}
    row.update({name: result.config.get(name) for name in HYPERPARAMETERS})
    if history is not None and METRIC in history and history[METRIC].notna().any():
        best_row = history.loc[history[METRIC].idxmax()]
        row.update({k: best_row[k] for k in history.columns if k.startswith(f"{METRIC}/")})
        row["best_epoch"] = int(best_row.get(EPOCH, 0))
    row["time_s"] = float(metrics.get("time_total_s", 0.0) or 0.0)
    row["checkpoint"] = best.path if best is not None else _reported_checkpoint(history)
    row["trial_dir"] = result.path
    row["error"] = _one_line(result.error) if result.error is not None else None
    return row


def _reported_checkpoint(history: pd.DataFrame | None) -> str | None:
    """Best checkpoint of a data-parallel trial: its Train run reports checkpoint paths as a metric."""
    if history is None or "checkpoint_path" not in history or METRIC not in history:
        return None
    with_path = history.dropna(subset=["checkpoint_path", METRIC])
    return str(with_path.loc[with_path[METRIC].idxmax(), "checkpoint_path"]) if len(with_path) else None


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line[:300]
    return (lines[-1] if lines else type(error).__name__)[:300]


def format_summary(summary: pd.DataFrame, top: int = 10) -> str:
    """The top trials as a text table."""
    if summary.empty:
        return "(no trials)"
    columns = ["trial_id", "state", "epochs", "best_val_kappa", *HYPERPARAMETERS]
    columns += [c for c in summary.columns if c.startswith(f"{METRIC}/")]
    table = summary[columns].head(top).copy()
    table["lr"] = table["lr"].map(lambda v: f"{v:.2e}" if isinstance(v, float) else v)
    if "weight_decay" in table:
        table["weight_decay"] = table["weight_decay"].map(lambda v: f"{v:.1e}" if isinstance(v, float) else v)
    table.columns = [c.replace(f"{METRIC}/", "") for c in table.columns]
    return table.to_string(index=False, float_format=lambda v: f"{v:.3f}")


# ------------------------------------------------------------------------------------------- entry
def run_search(
    config: ExperimentConfig,
    address: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    num_cpus: int | None = None,
    trainable: Callable | None = None,
    echo: Callable[[str], None] = print,
) -> SearchResult:
    """Run (or resume) a search and write its summary into the experiment folder.

    Args:
        config: the validated experiment config.
        address: Ray cluster address (``auto``, ``ray://...``); default ``RAY_ADDRESS`` or local Ray.
        resume: continue an interrupted search with the same name.
        overwrite: replace an existing experiment with the same name.
        num_cpus: CPUs for a local Ray started here (default: all).
        trainable: the trial function (default: ``muratune.trainables.train.tune_trainable``).
        echo: where progress lines go.
    """
    import ray

    if resume:
        config = _resumed_config(config)
    check_experiment(config, resume=resume, overwrite=overwrite)
    # Local search: build the cache once here, with a progress bar, so trials only open it. On a cluster each node
    # builds its own on first use, under a file lock.
    cache_info = preflight(config, local=address is None and not os.environ.get("RAY_ADDRESS"), echo=echo)
    started = connect_ray(address, num_cpus)
    try:
        check_cluster_resources(config, autoscaling=not started, echo=echo)
        # Only now that every check has passed is the experiment folder created (or replaced).
        exp_dir = prepare_experiment(config, resume=resume, overwrite=overwrite)
        if cache_info is not None:
            record_cache(exp_dir, cache_info, echo)
        tuner = restore_tuner(config, trainable) if resume else build_tuner(config, trainable)
        with _SigtermAsSigint():
            results = tuner.fit()
    finally:
        if started:
            ray.shutdown()
    unfinished = unfinished_trials(results)
    summary = summarise(results, config, unfinished)
    write_text(exp_dir / SUMMARY_CSV, summary.to_csv(index=False))
    echo(format_summary(summary))
    echo(f"\nexperiment: {exp_dir}\noptuna study: {optuna_storage_url(config)} (study {config.name!r})")
    if unfinished:
        echo(
            f"search stopped with {len(unfinished)} trial(s) unfinished (RUNNING); the same command with --resume "
            "continues them"
        )
    return SearchResult(exp_dir, summary, optuna_storage_url(config), unfinished=len(unfinished))


def record_cache(exp_dir: Path, cache_info: dict, echo: Callable[[str], None] = print) -> None:
    """Write ``cache.json`` (the cache used and the images it left out) and name the first left-out images."""
    write_json(exp_dir / CACHE_JSON, cache_info)
    excluded = cache_info["excluded"]
    for item in excluded[:SHOWN_EXCLUDED]:
        echo(f"excluded: {item['reason']}")
    if excluded:
        echo(f"{len(excluded)} unreadable image(s) left out of the search; all listed in {exp_dir / CACHE_JSON}")


def _resumed_config(config: ExperimentConfig) -> ExperimentConfig:
    """On resume, the experiment's own resolved config wins (so the same study and space are continued)."""
    from muratune.config import load_config

    saved = experiment_dir(config) / RESOLVED_CONFIG
    return load_config(saved) if saved.is_file() else config
