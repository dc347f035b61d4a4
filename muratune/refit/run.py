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
from muratune.cluster import connect_ray
from muratune.config import ExperimentConfig
from muratune.constants import EPOCH, METRIC, VAL_AUC
from muratune.errors import UserError
from muratune.fileio import (
    move_aside,
    refuse_existing,
    refuse_foreign,
    temp_dir_beside,
    write_json,
    write_marker,
    write_text,
)
from muratune.layout import CACHE_JSON, CV_ENSEMBLE, ENSEMBLE_DIR, REFIT_PLAN, REFIT_SUMMARY, TRIAL_FILE, TRIALS_DIR
from muratune.refit.plan import ENTRY, REFIT_KIND, RefitPlan, check_folds, make_plan, member_id, refit_dir
from muratune.search.experiment import finish_replacing, preflight
from muratune.search.factories import run_config
from muratune.search.resources import check_cluster_resources, trial_resources
from muratune.search.run import _SigtermAsSigint
from muratune.search.summary import _one_line
from muratune.trainables import checkpoint as ckpt


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
    return f"trial_{member_id(entry['trial_id'], entry['fold'])}"


def _bound(config: ExperimentConfig, epochs: int, exp_dir: Path) -> Any:
    from ray import tune

    storage_path, name = refit_storage(exp_dir)
    bound = tune.with_parameters(
        refit_trainable, experiment_config=epochs_settings(config, epochs), train_storage=f"{storage_path}/{name}_train"
    )
    return tune.with_resources(bound, trial_resources(config))


def build_refit_tuner(
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


# ------------------------------------------------------------------------------------------- summary
def checkpoint_epoch(path: str | None) -> int:
    """The epoch a fold model's checkpoint holds (0 when there is none)."""
    trial_file = Path(path) / TRIAL_FILE if path else None
    if trial_file is None or not trial_file.is_file():
        return 0
    return int(ckpt.read_json(trial_file).get("epoch", 0) or 0)


def _state(result: Any, checkpoint_epochs: int, epochs: int) -> str:
    """FAIL, COMPLETE (its checkpoint holds the last epoch) or RUNNING.

    The checkpoint decides rather than Tune's ``done`` flag, which a trial interrupted right after its last epoch
    lacks although its fold model is finished.
    """
    if result.error is not None:
        return "FAIL"
    return "COMPLETE" if checkpoint_epochs >= epochs else "RUNNING"


def _checkpoint_path(result: Any) -> str | None:
    """The fold model: the trial's latest checkpoint (data-parallel trials report its path as a metric)."""
    if result.checkpoint is not None:
        return str(result.checkpoint.path)
    history = result.metrics_dataframe
    if history is not None and "checkpoint_path" in history and history["checkpoint_path"].notna().any():
        return str(history["checkpoint_path"].dropna().iloc[-1])
    return None


def _entry(result: Any) -> dict:
    """The (configuration, fold) entry a result trained: from its config, or from the trial's ``params.json``
    (a restored trial that failed before it reported anything has no config in its result)."""
    entry = (result.config or {}).get(ENTRY)
    params = Path(result.path) / "params.json" if result.path else None
    if not entry and params is not None and params.is_file():
        entry = ckpt.read_json(params).get(ENTRY)
    return entry or {}


def summarise_refit(results: Any, epochs: int) -> pd.DataFrame:
    """One row per (configuration, fold): ``trial_id`` (the fold model), configuration, fold, state, metrics.

    ``epochs`` is the epochs of a finished fold model; ``epochs`` in the table is what its checkpoint holds.
    """
    rows = []
    for result in results:
        entry = _entry(result)
        metrics = result.metrics or {}
        checkpoint = _checkpoint_path(result)
        trained = checkpoint_epoch(checkpoint)
        rows.append(
            {
                "trial_id": member_id(str(entry.get("trial_id")), int(entry.get("fold", -1))),
                "configuration": str(entry.get("trial_id")),
                "fold": int(entry.get("fold", -1)),
                "state": _state(result, trained, epochs),
                "epochs": trained,
                "oof_kappa": metrics.get(METRIC),
                "oof_auc": metrics.get(VAL_AUC),
                "time_s": float(metrics.get("time_total_s", 0.0) or 0.0),
                "checkpoint": checkpoint,
                "trial_dir": result.path,
                "error": _one_line(result.error) if result.error is not None else None,
            }
        )
    summary = pd.DataFrame(rows)
    return summary.sort_values(["configuration", "fold"]).reset_index(drop=True) if len(summary) else summary


def fold_outcome(plan: RefitPlan, summary: pd.DataFrame) -> tuple[list[str], dict[str, list[str]]]:
    """The plan's fold models that have not finished (interrupted, or never started), and the failed ones' errors
    by configuration (``trial_<id>_fold<k>: <error>``)."""
    states = dict(zip(summary["trial_id"], summary["state"], strict=True)) if len(summary) else {}
    errors = dict(zip(summary["trial_id"], summary["error"], strict=True)) if len(summary) else {}
    unfinished: list[str] = []
    failed: dict[str, list[str]] = {}
    for entry in plan.entries():
        fold_model = member_id(entry["trial_id"], entry["fold"])
        state = states.get(fold_model)
        if state == "FAIL":
            failed.setdefault(entry["trial_id"], []).append(f"trial_{fold_model}: {errors.get(fold_model)}")
        elif state != "COMPLETE":
            unfinished.append(fold_model)
    return unfinished, failed


def stopped_message(exp_dir: Path, unfinished: list[str], failed: dict[str, list[str]]) -> str:
    """Why no ``ensemble/cv`` was built yet, and the commands that go on."""
    lines = [f"fold model {error}" for errors in failed.values() for error in errors]
    command = f"muratune refit {exp_dir} --resume"
    if unfinished:
        lines.append(f"refit stopped with {len(unfinished)} fold model(s) unfinished; `{command}` goes on")
    if failed:
        count = sum(len(errors) for errors in failed.values())
        lines.append(
            f"refit stopped: {count} fold model(s) failed; `{command}` retries them, `{command} --drop-failed` "
            f"builds ensemble/cv without configuration(s) {', '.join(failed)}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- entry
def run_refit(
    experiment: str | os.PathLike,
    top: int | None = None,
    folds: int | None = None,
    epochs: int | None = None,
    address: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    size: int = 5,
    tune_thresholds: bool = True,
    tta: bool = False,
    drop_failed: bool = False,
    num_cpus: int | None = None,
    stop: Any = None,
    echo: Callable[[str], None] = print,
) -> RefitResult:
    """Refit the best configurations of a finished search on patient-grouped folds and build ``ensemble/cv``.

    Args:
        experiment: the experiment folder written by ``muratune search``.
        top: how many configurations (best internal-val kappa, ties by AUC); default 3.
        folds: folds of the official train split; default 5.
        epochs: epochs per fold model; default the experiment's ``budget.max_epochs``.
        address: Ray cluster address; default ``RAY_ADDRESS`` or local Ray.
        resume: continue an interrupted refit (its ``refit.json`` plan wins; finished folds are not retrained).
        overwrite: replace an existing refit and ``ensemble/cv``.
        size: the most greedy picks of the out-of-fold selection.
        tune_thresholds: tune one threshold per body part on the out-of-fold predictions (else 0.5).
        tta: predict with horizontal-flip TTA; the out-of-fold predictions are recomputed the same way.
        drop_failed: build ``ensemble/cv`` from the configurations whose fold models all finished, leaving out any
            with a fold model that failed (after ``failure.max_failures`` retries); with ``resume``, failed fold
            models are not retried. Without it a failed fold model stops the refit before ``ensemble/cv``.
        num_cpus: CPUs for a local Ray started here (default: all).
        stop: a Tune stopping condition (tests use one to interrupt a refit).
        echo: where progress lines go.

    Returns:
        The refit summary; ``ensemble`` is the cv ensemble's spec once every fold has finished.
    """
    from muratune.ensemble.build import load_experiment_config

    exp_dir = Path(experiment).expanduser().resolve()
    config = load_experiment_config(exp_dir)
    plan = prepare_refit(exp_dir, config, top, folds, epochs, resume, overwrite, size, echo)
    cache_info = preflight(config, local=address is None and not os.environ.get("RAY_ADDRESS"), echo=echo)
    results, aside = _fit(config, plan, exp_dir, address, resume, drop_failed, num_cpus, stop, cache_info, echo)
    refit = refit_dir(exp_dir)
    summary = summarise_refit(results, plan.epochs)
    write_text(refit / REFIT_SUMMARY, summary.to_csv(index=False))
    if len(summary):  # finished fold models are never trained again
        ckpt.release_optimizer_state(summary.loc[summary["state"] == "COMPLETE", "trial_dir"].dropna())
    shown = summary.drop(columns=["trial_dir", "checkpoint", "error"], errors="ignore")
    echo(shown.to_string(index=False, float_format="{:.3f}".format))
    unfinished, failed = fold_outcome(plan, summary)
    if unfinished or (failed and not drop_failed):
        echo(stopped_message(exp_dir, unfinished, failed))
        finish_replacing(refit, aside, finished=False, echo=echo, kind=REFIT_KIND)
        return RefitResult(refit, summary, len(unfinished) + sum(len(f) for f in failed.values()))
    kept = [c.trial_id for c in plan.configurations if c.trial_id not in failed]
    if not kept:
        finish_replacing(refit, aside, finished=False, echo=echo, kind=REFIT_KIND)
        raise UserError(f"{refit / REFIT_SUMMARY}: every configuration has a failed fold model; nothing to ensemble")
    for name, errors in failed.items():
        echo(f"--drop-failed: configuration {name} left out of ensemble/cv ({errors[0]})")
    from muratune.refit.ensemble import build_cv_ensemble

    spec = build_cv_ensemble(
        exp_dir, config, plan, summary, size, tune_thresholds, overwrite, echo, tta=tta, configurations=kept,
        dropped={name: errors[0] for name, errors in failed.items()},
    )  # fmt: skip
    finish_replacing(refit, aside, finished=True, echo=echo, kind=REFIT_KIND)
    return RefitResult(refit, summary, 0, spec)


def prepare_refit(
    exp_dir: Path, config: ExperimentConfig, top: int | None, folds: int | None, epochs: int | None, resume: bool,
    overwrite: bool, size: int, echo: Callable[[str], None],
) -> RefitPlan:  # fmt: skip
    """Every check that needs no Ray, then the plan (new, or the one being resumed)."""
    check_local_storage(config)
    if size < 1:
        raise UserError(f"--size {size}: must be at least 1")
    refuse_existing(exp_dir / ENSEMBLE_DIR / CV_ENSEMBLE, overwrite, kind="ensemble")
    plan = make_plan(exp_dir, config, top, folds, epochs, resume, overwrite)
    if len(plan.configurations) < plan.requested_top:
        echo(f"--top {plan.requested_top}: the search has {len(plan.configurations)} trial(s) to rank; refitting those")
    check_folds(config, plan)
    return plan


def create_refit_dir(refit: Path, plan: RefitPlan) -> Path | None:
    """Put a new refit folder, holding its plan, in place in one rename; return where an existing refit was moved.

    An interruption never leaves a refit folder without its plan (which `make_plan` would refuse to replace).
    """
    refuse_foreign(refit, REFIT_KIND)
    tmp = temp_dir_beside(refit)
    write_json(tmp / REFIT_PLAN, plan.to_json())
    write_marker(tmp, REFIT_KIND)
    aside = move_aside(refit)
    os.replace(tmp, refit)
    return aside


def _fit(
    config: ExperimentConfig,
    plan: RefitPlan,
    exp_dir: Path,
    address: str | None,
    resume: bool,
    drop_failed: bool,
    num_cpus: int | None,
    stop: Any,
    cache_info: dict | None,
    echo: Callable[[str], None],
) -> tuple[Any, Path | None]:
    """Start (or restore) the Tune run on Ray and wait for it; return its results and where a replaced refit went.

    A refit being replaced (``--overwrite``) is moved aside only after all checks, and stays there until the new one
    has built ``ensemble/cv`` (`finish_replacing`).
    """
    import ray

    refit = refit_dir(exp_dir)
    aside = None
    started = connect_ray(address, num_cpus)
    try:
        check_cluster_resources(config, autoscaling=not started, echo=echo)
        if not resume:
            aside = create_refit_dir(refit, plan)
        if cache_info is not None:
            write_json(refit / CACHE_JSON, cache_info)
        if resume:
            tuner = restore_refit_tuner(config, plan, exp_dir, retry_failed=not drop_failed)
        else:
            tuner = build_refit_tuner(config, plan, exp_dir, stop)
        with _SigtermAsSigint():
            return tuner.fit(), aside
    except BaseException:
        finish_replacing(refit, aside, finished=False, echo=echo, kind=REFIT_KIND)
        raise
    finally:
        if started:
            ray.shutdown()
