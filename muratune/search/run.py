"""`muratune search`: run or resume a search and write its summary into the experiment folder."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from muratune.cluster import connect_ray, ray_address
from muratune.config import ExperimentConfig
from muratune.fileio import write_text
from muratune.layout import SUMMARY_CSV, optuna_storage_url, trial_dir
from muratune.search.experiment import (
    check_experiment,
    finish_replacing,
    preflight,
    prepare_experiment,
    record_cache,
    resumed_config,
)
from muratune.search.factories import create_tuner, restore_tuner, time_budget_reached
from muratune.search.resources import check_cluster_resources
from muratune.search.summary import format_summary, summarise, unfinished_trials
from muratune.search.tracking import require_mlflow
from muratune.trainables import checkpoint as ckpt


@dataclass
class SearchResult:
    """What a finished (or interrupted) search left behind; ``unfinished`` trials need ``--resume``."""

    experiment_dir: Path
    summary: pd.DataFrame
    optuna_storage: str
    unfinished: int = 0


class _SigtermAsSigint:
    """Treat SIGTERM like Ctrl-C during a search, so Tune saves a restorable state before exiting."""

    def __enter__(self) -> _SigtermAsSigint:
        self.previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGTERM, self.previous)


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
        config = resumed_config(config)
    check_experiment(config, resume=resume, overwrite=overwrite)
    require_mlflow(config)
    # Local search: build the cache once here, with a progress bar, so trials only open it. On a cluster each node
    # builds its own on first use, under a file lock.
    cache_info = preflight(config, local=ray_address(address) is None, echo=echo)
    started = connect_ray(address, num_cpus)
    aside = None
    try:
        check_cluster_resources(config, autoscaling=not started, echo=echo)
        # Only now that every check has passed is the experiment folder created (or the old one moved aside).
        exp_dir, aside = prepare_experiment(config, resume=resume, overwrite=overwrite)
        if cache_info is not None:
            record_cache(exp_dir, cache_info, echo)
        tuner = restore_tuner(config, trainable) if resume else create_tuner(config, trainable)
        with _SigtermAsSigint():
            results = tuner.fit()
    except BaseException:
        if aside is not None:
            finish_replacing(exp_dir, aside, finished=False, echo=echo)
        raise
    finally:
        if started:
            ray.shutdown()
    budget_reached = time_budget_reached(exp_dir)
    unfinished = set() if budget_reached else unfinished_trials(results)  # cut short by the budget: for good
    summary = summarise(results, config, unfinished)
    write_text(exp_dir / SUMMARY_CSV, summary.to_csv(index=False))
    ckpt.release_optimizer_state(finished_trial_dirs(exp_dir, summary))
    finish_replacing(exp_dir, aside, finished=not unfinished, echo=echo)
    report_search(config, exp_dir, summary, budget_reached, len(unfinished), echo)
    return SearchResult(exp_dir, summary, optuna_storage_url(config), unfinished=len(unfinished))


def report_search(
    config: ExperimentConfig, exp_dir: Path, summary: pd.DataFrame, budget_reached: bool, unfinished: int,
    echo: Callable[[str], None],
) -> None:  # fmt: skip
    """The summary table, where the results are, and how the search ended when it did not run to its end."""
    echo(format_summary(summary))
    echo(f"\nexperiment: {exp_dir}\noptuna study: {optuna_storage_url(config)} (study {config.name!r})")
    if budget_reached:
        cut = int((summary["state"] == "PRUNED").sum()) if len(summary) else 0
        echo(
            f"budget.time_budget_s ({config.budget.time_budget_s:g} s) ended the search after {len(summary)} trial(s); "
            f"{cut} trial(s) stopped before their last epoch (by ASHA or the budget) are PRUNED"
        )
    if unfinished:
        echo(
            f"search stopped with {unfinished} trial(s) unfinished (RUNNING); the same command with --resume "
            "continues them"
        )


def finished_trial_dirs(exp_dir: Path, summary: pd.DataFrame) -> list[Path]:
    """The folders of trials no resume trains again: COMPLETE, and PRUNED (ASHA stops a trial for good)."""
    if summary.empty:
        return []
    finished = summary.loc[summary["state"].isin(["COMPLETE", "PRUNED"]), "trial_id"]
    return [trial_dir(exp_dir, str(trial_id)) for trial_id in finished]
