"""`muratune search`: run or resume a search and write its summary into the experiment folder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from muratune.cluster import ray_address
from muratune.config import ExperimentConfig
from muratune.fileio import replacing_folder, write_text
from muratune.layout import EXPERIMENT_KIND, SUMMARY_CSV, experiment_dir, optuna_storage_url, trial_dir
from muratune.lock import experiment_lock
from muratune.search.experiment import check_experiment, preflight, prepare_experiment, record_cache, resumed_config
from muratune.search.factories import create_tuner, restore_tuner, time_budget_reached
from muratune.search.job import fit_job, ray_for_job
from muratune.search.summary import format_summary, prune_cut_trials, summarise, unfinished_trials
from muratune.search.tracking import require_mlflow
from muratune.trainables import checkpoint as ckpt


@dataclass
class SearchResult:
    """What a finished (or interrupted) search left behind; ``unfinished`` trials need ``--resume``."""

    experiment_dir: Path
    summary: pd.DataFrame
    optuna_storage: str
    unfinished: int = 0


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
        trainable: the trial function (default: ``muratune.trainables.trial.tune_trainable``).
        echo: where progress lines go.

    Raises:
        UserError: a bad config or data, or another muratune process writing this experiment (its lock).
    """
    with experiment_lock(experiment_dir(config), "search"):
        return _search(config, address, resume, overwrite, num_cpus, trainable, echo)


def _search(
    config: ExperimentConfig,
    address: str | None,
    resume: bool,
    overwrite: bool,
    num_cpus: int | None,
    trainable: Callable | None,
    echo: Callable[[str], None],
) -> SearchResult:
    """`run_search` under the experiment's lock."""
    if resume:
        config = resumed_config(config)
    check_experiment(config, resume=resume, overwrite=overwrite)
    require_mlflow(config)
    # Local search: build the cache once here, with a progress bar, so trials only open it. On a cluster each node
    # builds its own on first use, under a file lock.
    cache_info = preflight(config, local=ray_address(address) is None, echo=echo)
    with replacing_folder(experiment_dir(config), EXPERIMENT_KIND, echo) as replacement:
        with ray_for_job(config, address, num_cpus, echo):
            # Only now that every check has passed is the experiment folder created (or the old one moved aside).
            exp_dir = prepare_experiment(config, resume, overwrite, replacement)
            if cache_info is not None:
                record_cache(exp_dir, cache_info, echo)
            results = fit_job(restore_tuner(config, trainable) if resume else create_tuner(config, trainable))
        budget_reached = time_budget_reached(exp_dir)
        if budget_reached:
            prune_cut_trials(config)
        # Cut short by the budget: for good.
        unfinished = set() if budget_reached else unfinished_trials(results, config)
        summary = summarise(results, config, unfinished)
        write_text(exp_dir / SUMMARY_CSV, summary.to_csv(index=False))
        ckpt.release_optimizer_state(finished_trial_dirs(exp_dir, summary))
        replacement.finished = not unfinished
    report_search(config, exp_dir, summary, budget_reached, len(unfinished), echo)
    return SearchResult(exp_dir, summary, optuna_storage_url(config), unfinished=len(unfinished))


def report_search(
    config: ExperimentConfig,
    exp_dir: Path,
    summary: pd.DataFrame,
    budget_reached: bool,
    unfinished: int,
    echo: Callable[[str], None],
) -> None:
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
