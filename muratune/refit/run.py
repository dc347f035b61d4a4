"""Run (or resume) a refit: one Tune trial per (configuration, fold), on the search's resources and failure rules.

Expected results in the experiment folder::

    EXPERIMENT/refit/
        refit.json            the plan: configurations (search trial, hyperparameters), folds, epochs, split seed
        trials/               Tune's run: trial_<search trial>_fold<k>/checkpoint_*/ (the fold model, last epoch;
                              its val predictions are the out-of-fold predictions of fold k)
        refit_summary.csv     one row per (configuration, fold): state, epochs, out-of-fold kappa/AUC, checkpoint
        oof_images.parquet    every train image's out-of-fold probability, per configuration
    EXPERIMENT/ensemble/cv/   the ensemble selected on out-of-fold predictions (see muratune.refit.ensemble)
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from muratune import layout
from muratune.config import ExperimentConfig
from muratune.constants import EPOCH, METRIC, VAL_AUC
from muratune.errors import UserError
from muratune.experiment_folder import load_resolved_config
from muratune.fileio import (
    Replacement,
    refuse_existing,
    refuse_foreign,
    replacing_folder,
    temp_dir_beside,
    write_json,
    write_marker,
)
from muratune.layout import (
    CACHE_JSON,
    CV_ENSEMBLE,
    ENSEMBLE_DIR,
    ENSEMBLE_KIND,
    REFIT_KIND,
    REFIT_PLAN,
    REFIT_SUMMARY,
    TRAIN_RUNS_DIR,
    TRIALS_DIR,
    trial_dirname,
)
from muratune.lock import experiment_lock
from muratune.refit.ensemble import CvSettings, build_cv_ensemble
from muratune.refit.plan import ENTRY, RefitPlan, check_folds, make_plan, member_id, refit_dir
from muratune.refit.summary import fold_outcome, record_refit_summary, stopped_message
from muratune.search.experiment import preflight
from muratune.search.factories import run_config
from muratune.search.job import fit_job, ray_for_job
from muratune.search.resources import trial_resources


@dataclass
class RefitResult:
    """What a refit left behind; ``unfinished`` folds need ``--resume`` before the cv ensemble is built."""

    refit_dir: Path
    summary: pd.DataFrame
    unfinished: int
    ensemble: dict | None = None


def refit_storage(exp_dir: Path) -> tuple[str, str]:
    """(storage_path, name) of the refit's Tune run: ``<experiment>/refit/trials``, in the experiment folder as found
    now (so a moved experiment still refits); on a cluster that folder must be shared by the nodes (NFS)."""
    return str(refit_dir(exp_dir)), TRIALS_DIR


def check_local_storage(config: ExperimentConfig) -> None:
    """Refuse a search stored on cloud storage: refit reads its checkpoints and writes ``ensemble/cv`` as files."""
    if layout.is_remote(config.storage):
        raise UserError(
            f"storage: {config.storage}: refit needs the experiment on a filesystem this machine (and, on a cluster, "
            "every node) reads; copy the experiment to a local or shared folder and refit that copy"
        )


def epochs_settings(config: ExperimentConfig, epochs: int) -> dict:
    """The experiment settings with ``epochs`` epochs per fold and no early stopping (no ASHA in a refit)."""
    settings = config.model_dump(mode="json")
    settings["budget"].update(max_epochs=epochs, grace_period=min(epochs, config.budget.grace_period), scheduler="none")
    return settings


def fold_settings(settings: dict, entry: dict) -> dict:
    """Settings for one entry: train on the other folds, validate (out-of-fold) on ``entry['fold']``."""
    out = copy.deepcopy(settings)
    out["data"].update(folds=int(entry["folds"]), fold=int(entry["fold"]))
    return out


def refit_trainable(hparams: dict, experiment_config: dict | None = None, train_storage: str | None = None) -> None:
    """Tune function trainable of one (configuration, fold); the other arguments are bound by ``with_parameters``.

    ``train_storage`` is where a data-parallel fold model's Train run goes: inside the refit folder, so that
    ``--overwrite`` moves it aside with the rest.
    """
    from muratune.trainables.reporters import TuneReporter
    from muratune.trainables.trial import train_trial

    entry = hparams[ENTRY]
    resolved = fold_settings(experiment_config or {}, entry)
    if int(resolved["resources"]["workers_per_trial"]) > 1:
        from muratune.trainables.distributed import ddp_tune_trainable

        ddp_tune_trainable(dict(entry["hparams"]), resolved, train_storage=train_storage)
    else:
        train_trial(dict(entry["hparams"]), resolved, TuneReporter())


def _trial_dirname(trial: Any) -> str:
    entry = trial.config[ENTRY]
    return trial_dirname(member_id(entry["trial_id"], entry["fold"]))


def _bound(config: ExperimentConfig, epochs: int, exp_dir: Path) -> Any:
    from ray import tune

    storage_path, name = refit_storage(exp_dir)
    bound = tune.with_parameters(
        refit_trainable,
        experiment_config=epochs_settings(config, epochs),
        train_storage=f"{storage_path}/{TRAIN_RUNS_DIR}",
    )
    return tune.with_resources(bound, trial_resources(config))


def create_refit_tuner(
    config: ExperimentConfig, plan: RefitPlan, exp_dir: Path, stop: Any = None, verbose: int = 1
) -> Any:
    """A Tuner over a fixed grid of (configuration, fold) entries: no searcher, no scheduler, latest checkpoint kept.

    Args:
        config: the experiment config (resources, failure handling, storage).
        plan: the entries to train.
        exp_dir: the experiment folder.
        stop: a Tune stopping condition (tests interrupt a refit with one).
        verbose: Tune's console verbosity.
    """
    from ray import tune

    storage_path, name = refit_storage(exp_dir)
    reporter = tune.CLIReporter(
        metric_columns={EPOCH: "epoch", METRIC: "oof_kappa", VAL_AUC: "oof_auc"},
        parameter_columns={f"{ENTRY}/trial_id": "configuration", f"{ENTRY}/fold": "fold"},
        max_report_frequency=30,
    )
    return tune.Tuner(
        _bound(config, plan.epochs, exp_dir),
        param_space={ENTRY: tune.grid_search(plan.entries())},
        tune_config=tune.TuneConfig(
            num_samples=1,
            max_concurrent_trials=config.resources.max_concurrent_trials,
            reuse_actors=True,
            trial_dirname_creator=_trial_dirname,
            trial_name_creator=_trial_dirname,
        ),
        run_config=run_config(
            config,
            name,
            storage_path,
            tune.CheckpointConfig(num_to_keep=1),  # the last epoch is the fold model
            reporter,
            stop=stop,
            verbose=verbose,
        ),
    )


def restore_refit_tuner(config: ExperimentConfig, plan: RefitPlan, exp_dir: Path, retry_failed: bool = True) -> Any:
    """Restore an interrupted refit: finished folds are kept, unfinished ones (and failed ones, with
    ``retry_failed``) continue from their checkpoints."""
    from ray import tune

    storage_path, name = refit_storage(exp_dir)
    path = f"{storage_path}/{name}"
    if not tune.Tuner.can_restore(path):
        raise UserError(f"{path}: no restorable refit state here; start the refit again with --overwrite")
    return tune.Tuner.restore(
        path, trainable=_bound(config, plan.epochs, exp_dir), resume_unfinished=True, resume_errored=retry_failed
    )


# ------------------------------------------------------------------------------------------- entry
@dataclass(frozen=True)
class RefitOptions:
    """What a refit is asked to do (`muratune refit`'s options).

    Attributes:
        top: how many configurations (best internal-val kappa, ties by AUC); default 3.
        folds: folds of the official train split; default 5.
        epochs: epochs per fold model; default the experiment's ``budget.max_epochs``.
        resume: continue an interrupted refit (its ``refit.json`` plan wins; finished folds are not retrained).
        overwrite: replace an existing refit and ``ensemble/cv``.
        size: the most greedy picks of the out-of-fold selection.
        tune_thresholds: tune one threshold per body part on the out-of-fold predictions (else 0.5).
        tta: predict with horizontal-flip TTA; the out-of-fold predictions are recomputed the same way.
        drop_failed: leave out configurations with a failed fold model (after ``failure.max_failures`` retries;
            none retried on ``resume``); without it a failed fold model stops the refit before ``ensemble/cv``.
        calibrate: fit per-body-part temperature scaling of the study probability on the out-of-fold predictions.
    """

    top: int | None = None
    folds: int | None = None
    epochs: int | None = None
    resume: bool = False
    overwrite: bool = False
    size: int = 5
    tune_thresholds: bool = True
    tta: bool = False
    drop_failed: bool = False
    calibrate: bool = True


def run_refit(
    experiment: str | os.PathLike,
    options: RefitOptions = RefitOptions(),
    address: str | None = None,
    num_cpus: int | None = None,
    stop: Any = None,
    echo: Callable[[str], None] = print,
) -> RefitResult:
    """Refit the best configurations of a finished search on patient-grouped folds and build ``ensemble/cv``.

    A refit being replaced (``--overwrite``) is moved aside only after all checks, and stays there until the new one
    has built ``ensemble/cv`` (`replacing_folder`).

    Args:
        experiment: the experiment folder written by ``muratune search``.
        options: what to refit, and how (see `RefitOptions`).
        address: Ray cluster address; default ``RAY_ADDRESS`` or local Ray.
        num_cpus: CPUs for a local Ray started here (default: all).
        stop: a Tune stopping condition (tests use one to interrupt a refit).
        echo: where progress lines go.

    Returns:
        The refit summary; ``ensemble`` is the cv ensemble's spec once every fold has finished.
    """
    exp_dir = Path(experiment).expanduser().resolve()
    with experiment_lock(exp_dir, "refit"):
        return _refit(exp_dir, options, address, num_cpus, stop, echo)


def _refit(
    exp_dir: Path,
    options: RefitOptions,
    address: str | None,
    num_cpus: int | None,
    stop: Any,
    echo: Callable[[str], None],
) -> RefitResult:
    """`run_refit` under the experiment's lock."""
    config = load_resolved_config(exp_dir)
    plan = prepare_refit(exp_dir, config, options, echo)
    cache_info = preflight(config, local=address is None and not os.environ.get("RAY_ADDRESS"), echo=echo)
    refit = refit_dir(exp_dir)
    with replacing_folder(refit, REFIT_KIND, echo) as replacement:
        with ray_for_job(config, address, num_cpus, echo):
            if not options.resume:
                create_refit_dir(replacement, plan)
            if cache_info is not None:
                write_json(refit / CACHE_JSON, cache_info)
            results = fit_job(refit_tuner(config, plan, exp_dir, options, stop))
        summary = record_refit_summary(refit, results, plan.epochs, echo)
        unfinished, failed = fold_outcome(plan, summary)
        if unfinished or (failed and not options.drop_failed):
            echo(stopped_message(exp_dir, unfinished, failed))
            replacement.finished = False
            return RefitResult(refit, summary, len(unfinished) + sum(len(f) for f in failed.values()))
        kept, dropped = kept_configurations(plan, failed, refit, echo)
        settings = CvSettings(
            size=options.size,
            tune_thresholds=options.tune_thresholds,
            tta=options.tta,
            calibrate=options.calibrate,
            overwrite=options.overwrite,
            configurations=tuple(kept),
            dropped_configurations=dropped,
        )
        spec = build_cv_ensemble(exp_dir, config, plan, summary, settings, echo=echo)
    return RefitResult(refit, summary, 0, spec)


def kept_configurations(
    plan: RefitPlan, failed: dict[str, list[str]], refit: Path, echo: Callable[[str], None]
) -> tuple[list[str], dict[str, str]]:
    """The configurations ``--drop-failed`` keeps (those whose fold models all finished), and the ones it leaves out
    with their first error; refuses when none is kept."""
    kept = [c.trial_id for c in plan.configurations if c.trial_id not in failed]
    if not kept:
        raise UserError(f"{refit / REFIT_SUMMARY}: every configuration has a failed fold model; nothing to ensemble")
    dropped = {name: errors[0] for name, errors in failed.items()}
    for name, error in dropped.items():
        echo(f"--drop-failed: configuration {name} left out of ensemble/cv ({error})")
    return kept, dropped


def prepare_refit(
    exp_dir: Path, config: ExperimentConfig, options: RefitOptions, echo: Callable[[str], None]
) -> RefitPlan:
    """Every check that needs no Ray, then the plan (new, or the one being resumed)."""
    check_local_storage(config)
    if options.size < 1:
        raise UserError(f"--size {options.size}: must be at least 1")
    refuse_existing(exp_dir / ENSEMBLE_DIR / CV_ENSEMBLE, options.overwrite, kind=ENSEMBLE_KIND)
    plan = make_plan(exp_dir, config, options.top, options.folds, options.epochs, options.resume, options.overwrite)
    if len(plan.configurations) < plan.requested_top:
        echo(f"--top {plan.requested_top}: the search has {len(plan.configurations)} trial(s) to rank; refitting those")
    check_folds(config, plan)
    if options.resume:
        check_plan_against_trials(plan, refit_dir(exp_dir))
    return plan


def check_plan_against_trials(plan: RefitPlan, refit: Path) -> None:
    """Refuse a resumed plan that leaves out fold models its Tune run holds: ``refit.json`` was edited (its Tune run
    would finish its own fold models while the plan waited for others for ever)."""
    planned = {trial_dirname(member_id(e["trial_id"], e["fold"])) for e in plan.entries()}
    stored = sorted(p.name for p in (refit / TRIALS_DIR).glob(trial_dirname("*")) if p.is_dir())
    strangers = [name for name in stored if name not in planned]
    if strangers:
        raise UserError(
            f"{refit / REFIT_PLAN}: the refit being resumed trained {strangers[0]}, which its plan does not list "
            f"(was refit.json edited?); start it again with --overwrite"
        )


def create_refit_dir(replacement: Replacement, plan: RefitPlan) -> Path | None:
    """Put a new refit folder, holding its plan, in place in one rename; return where an existing refit was moved.

    An interruption never leaves a refit folder without its plan (which `make_plan` would refuse to replace).
    """
    refit = replacement.target
    refuse_foreign(refit, REFIT_KIND)
    tmp = temp_dir_beside(refit)
    write_json(tmp / REFIT_PLAN, plan.to_json())
    write_marker(tmp, REFIT_KIND)
    replacement.move_old_aside()
    os.replace(tmp, refit)
    return replacement.aside


def refit_tuner(config: ExperimentConfig, plan: RefitPlan, exp_dir: Path, options: RefitOptions, stop: Any) -> Any:
    """The refit's Tuner: restored on ``resume`` (failed folds retried unless ``drop_failed``), else a new one."""
    if options.resume:
        return restore_refit_tuner(config, plan, exp_dir, retry_failed=not options.drop_failed)
    return create_refit_tuner(config, plan, exp_dir, stop)
