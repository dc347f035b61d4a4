"""The experiment's default predictor, chosen on out-of-fold evidence: does the cv ensemble beat its best
configuration alone on the same held-out folds, by a paired bootstrap margin? (``ensemble/default.json``)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from muratune.constants import BODY_PART, LABEL
from muratune.ensemble.scoring import tuned_thresholds
from muratune.ensemble.select import ValPredictions, align_image_predictions, combine, study_matrix
from muratune.errors import UserError
from muratune.fileio import write_json
from muratune.layout import CV_ENSEMBLE, CV_FULL_ENSEMBLE, DEFAULT_PREDICTOR, ENSEMBLE_DIR, ENSEMBLE_FILE, OOF_IMAGES
from muratune.metrics import kappa_from_counts
from muratune.refit.oof import CONFIGURATION
from muratune.refit.plan import RefitPlan, refit_dir
from muratune.report.bootstrap import percentile_interval, replicate_kappas, resample_counts
from muratune.schemas import PREDICTORS, DefaultChoice, EnsembleSpec, read_ensemble_spec

AUTO = "auto"  # --default auto: chosen on the out-of-fold evidence
DEFAULT_OPTIONS = (AUTO, *PREDICTORS)
RULE = (
    "out of fold, the cv ensemble against its best configuration alone: cv-full (where built) unless cv's kappa or "
    "log loss is clearly worse (95% CI wholly on the worse side); else cv when its kappa gain has a 95% CI above 0, "
    "or its log-loss gain has one below 0 and its kappa is not clearly worse; else the best single trial"
)
REPLICATES, SEED = 2000, 0


def read_oof(exp_dir: Path, names: list[str]) -> ValPredictions:
    """The saved out-of-fold predictions (``refit/oof_images.parquet``) of those of ``names`` it holds, per study."""
    frame = pd.read_parquet(refit_dir(exp_dir) / OOF_IMAGES)
    names = [name for name in names if name in set(frame[CONFIGURATION])]  # --drop-failed left some out
    frames = [frame[frame[CONFIGURATION] == name] for name in names]
    images, probs = align_image_predictions(frames, names)
    studies, matrix = study_matrix(images, probs)
    return ValPredictions(studies, matrix, list(names))


def _labels_at_thresholds(studies: pd.DataFrame, probs: np.ndarray, tune: bool) -> np.ndarray:
    """Study predictions at per-body-part thresholds tuned on these probabilities (0.5 without ``tune``), as
    ``study_metrics`` applies them."""
    thresholds = tuned_thresholds(studies, probs) if tune else {}
    cut = studies[BODY_PART].map(lambda part: thresholds.get(part, 0.5)).to_numpy(dtype=float)
    return (probs - cut + 0.5) >= 0.5


def _study_losses(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    clipped = np.clip(probs, 1e-7, 1 - 1e-7)
    return -(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))


def _kappa(labels: np.ndarray, preds: np.ndarray) -> float:
    labels, preds = labels.astype(bool), preds.astype(bool)
    cells = [np.sum(labels & preds), np.sum(~labels & preds), np.sum(labels & ~preds), np.sum(~labels & ~preds)]
    return float(kappa_from_counts(*(np.asarray([float(c)]) for c in cells))[0])


def oof_evidence(oof: ValPredictions, cv: EnsembleSpec, single: str, replicates: int = REPLICATES) -> dict:
    """The cv ensemble's out-of-fold kappa and log loss against configuration ``single`` alone, paired on the same
    studies, with stratified bootstrap CIs of the differences (cv minus single; uncalibrated probabilities, each
    with thresholds tuned on its own out-of-fold predictions when cv's were)."""
    from muratune.refit.full import configuration_weights

    parts = list(oof.studies[BODY_PART])
    labels = oof.studies[LABEL].to_numpy(dtype=int)
    by_name = configuration_weights(cv)
    weights = {}
    for part, vector in by_name.items():
        full = np.zeros(len(oof.names))
        for name, w in zip(cv.configurations, vector, strict=True):
            full[oof.names.index(name)] = w
        weights[part] = full
    probs = {"cv": combine(oof.probs, parts, weights), "single": oof.probs[:, oof.names.index(single)]}
    preds = {k: _labels_at_thresholds(oof.studies, p, cv.tune_thresholds) for k, p in probs.items()}
    losses = {k: _study_losses(labels, p) for k, p in probs.items()}
    counts = resample_counts(np.asarray(parts), replicates, SEED)
    kappa_diff = replicate_kappas(labels, preds["cv"], counts) - replicate_kappas(labels, preds["single"], counts)
    loss_diff = (counts @ (losses["cv"] - losses["single"])) / counts.sum(axis=1)
    kappa = {k: _kappa(labels, p) for k, p in preds.items()}
    loss = {k: float(np.mean(v)) for k, v in losses.items()}
    return {
        "studies": len(labels),
        "replicates": replicates,
        "oof_kappa_cv": kappa["cv"],
        "oof_kappa_single": kappa["single"],
        "kappa_diff": kappa["cv"] - kappa["single"],
        "kappa_diff_ci": list(percentile_interval(kappa_diff[np.isfinite(kappa_diff)])),
        "oof_log_loss_cv": loss["cv"],
        "oof_log_loss_single": loss["single"],
        "log_loss_diff": loss["cv"] - loss["single"],
        "log_loss_diff_ci": list(percentile_interval(loss_diff)),
    }


def ensemble_not_worse(evidence: dict) -> bool:
    """Neither cv's kappa nor its log loss is clearly worse than the best configuration's alone (95% CIs)."""
    return bool(evidence["kappa_diff_ci"][1] >= 0 and evidence["log_loss_diff_ci"][0] <= 0)


def ensemble_wins(evidence: dict) -> bool:
    """The kappa gain is clear, or the log-loss gain is clear and kappa is not clearly worse (95% CIs)."""
    clear_kappa = evidence["kappa_diff_ci"][0] > 0
    clear_loss = evidence["log_loss_diff_ci"][1] < 0 and evidence["kappa_diff_ci"][1] >= 0
    return bool(clear_kappa or clear_loss)


def _fmt(evidence: dict, key: str) -> str:
    low, high = evidence[f"{key}_ci"]
    return f"{evidence[key]:+.3f} [{low:+.3f}, {high:+.3f}]"


def auto_choice(evidence: dict, single: str, full_built: bool) -> tuple[str, str]:
    """The predictor `RULE` picks, and why in one line.

    cv-full needs no win: its models are cv's configurations trained on every train study, while the best single
    trial saw the train split less its internal-val patients (on the hard refit benchmark cv-full led best-single by
    +0.078 kappa and +0.031 AUC over 3 seeds, docs/refit.md); it only has to be not clearly worse out of fold.
    """
    gains = f"kappa {_fmt(evidence, 'kappa_diff')}, log loss {_fmt(evidence, 'log_loss_diff')}"
    if full_built and ensemble_not_worse(evidence):
        return CV_FULL_ENSEMBLE, f"out of fold, cv is not clearly worse than configuration {single} alone ({gains})"
    if ensemble_wins(evidence):
        return CV_ENSEMBLE, f"out of fold, cv beats configuration {single} alone by the margin ({gains})"
    return "best-single", f"out of fold, cv does not beat configuration {single} alone by the margin ({gains})"


def predictor_path(exp_dir: Path, predictor: str, plan: RefitPlan) -> str:
    """Where ``predictor`` lies, relative to the experiment: its ensemble folder, or (best-single without
    ``ensemble/best-single``) the best trial's checkpoint; refuses one that does not exist."""
    folder = exp_dir / ENSEMBLE_DIR / predictor
    if (folder / ENSEMBLE_FILE).is_file():
        return f"{ENSEMBLE_DIR}/{predictor}"
    if predictor == "best-single":
        checkpoint = Path(plan.configurations[0].checkpoint).resolve()
        if checkpoint.is_relative_to(exp_dir.resolve()):
            return str(checkpoint.relative_to(exp_dir.resolve()))
    raise UserError(f"--default {predictor}: {folder} not found (build it first: `muratune ensemble` or --full)")


def record_default(exp_dir: Path, plan: RefitPlan, option: str, echo: Callable[[str], None] = print) -> DefaultChoice:
    """Choose the default predictor (``option``: auto, or one forced), and record the choice and the out-of-fold
    evidence in ``ensemble/default.json`` and in the ``ensemble.json`` of cv, cv-full and the chosen ensemble."""
    ensembles = exp_dir / ENSEMBLE_DIR
    cv = read_ensemble_spec(ensembles / CV_ENSEMBLE / ENSEMBLE_FILE)
    oof = read_oof(exp_dir, [c.trial_id for c in plan.configurations])
    single = next(c.trial_id for c in plan.configurations if c.trial_id in oof.names)
    evidence = oof_evidence(oof, cv, single)
    full_built = (ensembles / CV_FULL_ENSEMBLE / ENSEMBLE_FILE).is_file()
    if option == AUTO:
        predictor, reason = auto_choice(evidence, single, full_built)
        rule = RULE
    else:
        predictor, rule = option, f"--default {option}"
        reason = f"chosen with --default {option}; out of fold, cv against configuration {single} alone: kappa " + (
            f"{_fmt(evidence, 'kappa_diff')}, log loss {_fmt(evidence, 'log_loss_diff')}"
        )
    path = predictor_path(exp_dir, predictor, plan)
    choice = DefaultChoice.model_validate(
        {"predictor": predictor, "path": path, "rule": rule, "reason": reason, "configuration": single}
        | {"evidence": evidence}
    )
    write_json(ensembles / DEFAULT_PREDICTOR, choice.model_dump(mode="json"))
    for name in {CV_ENSEMBLE, CV_FULL_ENSEMBLE, predictor}:
        if (ensembles / name / ENSEMBLE_FILE).is_file():
            spec = read_ensemble_spec(ensembles / name / ENSEMBLE_FILE)
            write_json(ensembles / name / ENSEMBLE_FILE, spec.model_copy(update={"default": choice}).to_json())
    echo(f"default predictor: {predictor} ({path}): {reason}")
    return choice
