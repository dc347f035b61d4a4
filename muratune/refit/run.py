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

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from muratune import layout
from muratune.config import ExperimentConfig
from muratune.errors import UserError
from muratune.experiment_folder import load_resolved_config
from muratune.fileio import (
    Replacement,
    made_by_muratune,
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
    CV_FULL_ENSEMBLE,
    ENSEMBLE_DIR,
    ENSEMBLE_FILE,
    ENSEMBLE_KIND,
    FULL_SUMMARY,
    REFIT_KIND,
    REFIT_PLAN,
    REFIT_SUMMARY,
    TRIALS_DIR,
    trial_dirname,
)
from muratune.lock import experiment_lock
from muratune.refit.default import AUTO, DEFAULT_OPTIONS, record_default
from muratune.refit.ensemble import CvSettings, build_cv_ensemble
from muratune.refit.full import build_full_ensemble, full_outcome, full_tuner, read_cv_spec
from muratune.refit.plan import (
    EpochsOption,
    RefitPlan,
    check_folds,
    make_plan,
    member_id,
    parse_epochs,
    refit_dir,
    resumed_plan,
)
from muratune.refit.summary import fold_outcome, record_refit_summary, stopped_message
from muratune.refit.tuner import create_refit_tuner, restore_refit_tuner
from muratune.search.experiment import preflight
from muratune.search.job import fit_job, ray_for_job


@dataclass
class RefitResult:
    """What a refit left behind; ``unfinished`` fold (or full) models need ``--resume`` (or ``--full`` again)
    before the cv (or cv-full) ensemble is built. ``full`` is cv-full's spec, ``default`` the default choice."""

    refit_dir: Path
    summary: pd.DataFrame
    unfinished: int
    ensemble: dict | None = None
    full: dict | None = None
    default: dict | None = None


def check_local_storage(config: ExperimentConfig) -> None:
    """Refuse a search stored on cloud storage: refit reads its checkpoints and writes ``ensemble/cv`` as files."""
    if layout.is_remote(config.storage):
        raise UserError(
            f"storage: {config.storage}: refit needs the experiment on a filesystem this machine (and, on a cluster, "
            "every node) reads; copy the experiment to a local or shared folder and refit that copy"
        )


# ------------------------------------------------------------------------------------------- entry
@dataclass(frozen=True)
class RefitOptions:
    """What a refit is asked to do (`muratune refit`'s options).

    Attributes:
        top: how many configurations (best internal-val kappa, ties by AUC); default 3.
        folds: folds of the official train split; default 5.
        epochs: epochs per fold model: a number, or ``peak`` (each configuration the epoch its search trial peaked
            at); default the experiment's ``budget.max_epochs``.
        resume: continue an interrupted refit (its ``refit.json`` plan wins; finished folds are not retrained).
        overwrite: replace an existing refit and ``ensemble/cv`` (and ``ensemble/cv-full``).
        size: the most greedy picks of the out-of-fold selection.
        tune_thresholds: tune one threshold per body part on the out-of-fold predictions (else 0.5).
        tta: predict with horizontal-flip TTA; the out-of-fold predictions are recomputed the same way.
        drop_failed: leave out configurations with a failed fold model (after ``failure.max_failures`` retries;
            none retried on ``resume``); without it a failed fold model stops the refit before ``ensemble/cv``.
        calibrate: fit per-body-part temperature scaling of the study probability on the out-of-fold predictions.
        full: also retrain cv's configurations once on the whole train split (``ensemble/cv-full``); on a refit
            whose ``ensemble/cv`` exists, only that. Off here, on by default in `muratune refit` (``--no-full``),
            so that callers of the library that test one stage do not pay for the other.
        default: which predictor becomes the experiment's default: ``auto`` (on out-of-fold evidence) or a
            predictor's name (``cv``, ``cv-full``, ``best-single``, ``greedy``).
    """

    top: int | None = None
    folds: int | None = None
    epochs: EpochsOption = None
    resume: bool = False
    overwrite: bool = False
    size: int = 5
    tune_thresholds: bool = True
    tta: bool = False
    drop_failed: bool = False
    calibrate: bool = True
    full: bool = False
    default: str = AUTO


def run_refit(
    experiment: str | os.PathLike,
    options: RefitOptions = RefitOptions(),
    address: str | None = None,
    num_cpus: int | None = None,
    stop: Any = None,
    echo: Callable[[str], None] = print,
) -> RefitResult:
    """Refit the best configurations of a finished search on patient-grouped folds and build ``ensemble/cv``
    (with ``full``, then ``ensemble/cv-full``), then choose the default predictor (``ensemble/default.json``).

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


def full_only(exp_dir: Path, options: RefitOptions) -> bool:
    """``--full`` on a refit whose ``ensemble/cv`` exists (no ``--overwrite``): only the full models are trained."""
    built = (exp_dir / ENSEMBLE_DIR / CV_ENSEMBLE / ENSEMBLE_FILE).is_file()
    return options.full and not options.overwrite and built and (refit_dir(exp_dir) / REFIT_PLAN).is_file()


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
    only_full = full_only(exp_dir, options)
    plan = prepare_refit(exp_dir, config, options, echo, only_full)
    local = address is None and not os.environ.get("RAY_ADDRESS")
    cache_info = preflight(config, local=local, echo=echo)
    if only_full:
        summary = pd.read_csv(refit_dir(exp_dir) / REFIT_SUMMARY, dtype={"trial_id": str, "configuration": str})
        result = RefitResult(refit_dir(exp_dir), summary, 0, read_cv_spec(exp_dir, plan).to_json())
    else:
        result = _fold_models(exp_dir, config, plan, options, cache_info, (address, num_cpus), stop, echo)
        if result.ensemble is None:
            return result
    if options.full:
        with ray_for_job(config, address, num_cpus, echo):
            full_results = fit_job(
                full_tuner(config, plan, exp_dir, list(read_cv_spec(exp_dir, plan).configurations), stop)
            )
        result = _finish_full(exp_dir, config, plan, options, full_results, result, echo)
    result.default = record_default(exp_dir, plan, options.default, echo).model_dump(mode="json")
    return result


def _fold_models(
    exp_dir: Path,
    config: ExperimentConfig,
    plan: RefitPlan,
    options: RefitOptions,
    cache_info: dict | None,
    ray_at: tuple[str | None, int | None],
    stop: Any,
    echo: Callable[[str], None],
) -> RefitResult:
    """Train (or resume) the fold models and build ``ensemble/cv`` once they have all finished."""
    refit = refit_dir(exp_dir)
    with replacing_folder(refit, REFIT_KIND, echo) as replacement:
        with ray_for_job(config, *ray_at, echo):
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
        remove_stale_full(exp_dir, echo)
    return RefitResult(refit, summary, 0, spec)


def remove_stale_full(exp_dir: Path, echo: Callable[[str], None]) -> None:
    """A new ``ensemble/cv`` makes an older ``ensemble/cv-full`` stale (other configurations or weights): remove it
    (only a muratune ensemble folder; ``--overwrite`` was needed to get here)."""
    stale = exp_dir / ENSEMBLE_DIR / CV_FULL_ENSEMBLE
    if stale.is_dir() and made_by_muratune(stale, ENSEMBLE_KIND):
        shutil.rmtree(stale)
        echo(f"removed {stale}: it was built from the cv ensemble this refit replaced")


def _finish_full(
    exp_dir: Path,
    config: ExperimentConfig,
    plan: RefitPlan,
    options: RefitOptions,
    results: Any,
    result: RefitResult,
    echo: Callable[[str], None],
) -> RefitResult:
    """Record the full models; build ``ensemble/cv-full`` once they have all finished."""
    names = list(read_cv_spec(exp_dir, plan).configurations)
    summary = record_refit_summary(refit_dir(exp_dir), results, plan.epochs, echo, name=FULL_SUMMARY)
    unfinished, failed = full_outcome(summary, names)
    if unfinished or failed:
        lines = [f"full model {error}" for error in failed]
        lines.append(
            f"refit --full stopped with {len(unfinished) + len(failed)} full model(s) unfinished or failed; "
            f"`muratune refit {exp_dir} --full` goes on (finished ones are not trained again)"
        )
        echo("\n".join(lines))
        result.unfinished = len(unfinished) + len(failed)
        return result
    spec = build_full_ensemble(exp_dir, config, plan, summary, options.overwrite, echo=echo)
    result.full = spec.to_json()
    return result


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
    exp_dir: Path, config: ExperimentConfig, options: RefitOptions, echo: Callable[[str], None], only_full: bool = False
) -> RefitPlan:
    """Every check that needs no Ray, then the plan (new, or the one being resumed or given full models)."""
    check_local_storage(config)
    if options.size < 1:
        raise UserError(f"--size {options.size}: must be at least 1")
    if options.default not in DEFAULT_OPTIONS:
        raise UserError(f"--default {options.default}: expected one of {', '.join(DEFAULT_OPTIONS)}")
    if options.default == CV_FULL_ENSEMBLE and not options.full:
        raise UserError("--default cv-full: needs --full (ensemble/cv-full is built by it)")
    if options.default == "greedy" and not (exp_dir / ENSEMBLE_DIR / "greedy" / ENSEMBLE_FILE).is_file():
        raise UserError("--default greedy: no ensemble/greedy in this experiment; build it with `muratune ensemble`")
    epochs = parse_epochs(options.epochs)
    full = exp_dir / ENSEMBLE_DIR / CV_FULL_ENSEMBLE
    refuse_existing(full, options.overwrite or not options.full, kind=ENSEMBLE_KIND)
    if only_full:
        plan = resumed_plan(exp_dir, options.top, options.folds, epochs)
        read_cv_spec(exp_dir, plan)
        return plan
    refuse_existing(exp_dir / ENSEMBLE_DIR / CV_ENSEMBLE, options.overwrite, kind=ENSEMBLE_KIND)
    plan = make_plan(exp_dir, config, options.top, options.folds, epochs, options.resume, options.overwrite)
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
        return restore_refit_tuner(config, plan.epochs, exp_dir, retry_failed=not options.drop_failed)
    return create_refit_tuner(config, plan.entries(), plan.epochs, exp_dir, stop=stop)
