"""``refit --full`` (after AutoGluon's ``refit_full``): the cv ensemble's configurations, each retrained once on the
whole train split for its refit epochs, as ``ensemble/cv-full`` with cv's strategy, weights, thresholds and
calibration."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from muratune import __version__
from muratune.config import ExperimentConfig
from muratune.ensemble.artifact import EnsembleArtifact, member_entries, write_artifact
from muratune.ensemble.inputs import Candidate
from muratune.ensemble.scoring import test_score
from muratune.ensemble.select import Weights
from muratune.ensemble.trained import load_trained_model
from muratune.errors import UserError
from muratune.fileio import write_json
from muratune.layout import (
    CV_ENSEMBLE,
    CV_FULL_ENSEMBLE,
    ENSEMBLE_DIR,
    ENSEMBLE_FILE,
    FULL_DIR,
    TEST_METRICS,
    TEST_STUDIES,
)
from muratune.metrics import defined_or_none
from muratune.refit.ensemble import OofSelection, score_on_test
from muratune.refit.plan import RefitPlan, full_id
from muratune.refit.tuner import can_restore, create_refit_tuner, restore_refit_tuner
from muratune.schemas import DataConfig, EnsembleSpec, read_ensemble_spec


def read_cv_spec(exp_dir: Path, plan: RefitPlan) -> EnsembleSpec:
    """``ensemble/cv``'s spec, refused when it was not built by this refit (a configuration outside its plan)."""
    path = exp_dir / ENSEMBLE_DIR / CV_ENSEMBLE / ENSEMBLE_FILE
    spec = read_ensemble_spec(path)
    planned = {c.trial_id for c in plan.configurations}
    strangers = [name for name in spec.configurations if name not in planned]
    if strangers or not spec.configurations or spec.folds != plan.folds:
        shown = strangers[0] if strangers else "(none)"
        raise UserError(
            f"{path}: not built by the refit in {exp_dir / 'refit'} (configuration {shown}, folds {spec.folds}); "
            "rebuild both with `muratune refit --overwrite`"
        )
    return spec


def full_entries(plan: RefitPlan, configurations: list[str]) -> list[dict]:
    """One Tune entry per configuration: the whole train split, for the configuration's refit epochs."""
    hparams = {c.trial_id: c.hparams for c in plan.configurations}
    return [
        {"trial_id": name, "full": True, "hparams": hparams[name], "epochs": plan.epochs_of(name)}
        for name in configurations
    ]


def full_tuner(config: ExperimentConfig, plan: RefitPlan, exp_dir: Path, configurations: list[str], stop: Any) -> Any:
    """The full models' Tuner (``refit/full``): restored when an earlier run left one (finished models are not
    trained again, unfinished and failed ones go on), else a new one."""
    if can_restore(exp_dir, FULL_DIR):
        return restore_refit_tuner(config, plan.epochs, exp_dir, FULL_DIR, retry_failed=True)
    return create_refit_tuner(config, full_entries(plan, configurations), plan.epochs, exp_dir, FULL_DIR, stop)


def full_outcome(summary: pd.DataFrame, configurations: list[str]) -> tuple[list[str], list[str]]:
    """The full models not finished yet, and the failed ones with their error."""
    rows = {str(r.trial_id): r for r in summary.itertuples()} if len(summary) else {}
    unfinished, failed = [], []
    for name in configurations:
        row = rows.get(full_id(name))
        if row is not None and row.state == "FAIL":
            failed.append(f"trial_{full_id(name)}: {row.error}")
        elif row is None or row.state != "COMPLETE":
            unfinished.append(full_id(name))
    return unfinished, failed


def configuration_weights(cv: EnsembleSpec) -> Weights:
    """cv's weights per configuration (each configuration's fold-model weights summed), per body part."""
    n = len(cv.configurations)
    return {part: np.asarray(vector, dtype=float).reshape(n, -1).sum(axis=1) for part, vector in cv.weights.items()}


def full_spec(cv: EnsembleSpec, plan: RefitPlan, weights: Weights, members: list, sources: list, test: dict):
    """``ensemble/cv-full``'s spec: cv's strategy, weights, thresholds and calibration, one member per
    configuration (no folds, no out-of-fold score of its own: its evidence is cv's, in ``default``)."""
    return EnsembleSpec(
        muratune_version=__version__,
        strategy=CV_FULL_ENSEMBLE,
        selected_strategy=cv.selected_strategy,
        size=cv.size,
        ranked_by=cv.ranked_by,
        tta=cv.tta,
        calibration=cv.calibration,
        thresholds=dict(cv.thresholds),
        threshold_default=cv.threshold_default,
        tune_thresholds=cv.tune_thresholds,
        epochs=max(plan.epochs_of(name) for name in cv.configurations),
        weights={part: [float(w) for w in vector] for part, vector in weights.items()},
        data_config=DataConfig.model_validate(members[0].data_config),
        configurations=dict(cv.configurations),
        dropped_configurations=dict(cv.dropped_configurations),
        test_score=test_score(test),
        members=member_entries(members, sources),
    )


def build_full_ensemble(
    exp_dir: Path,
    config: ExperimentConfig,
    plan: RefitPlan,
    summary: pd.DataFrame,
    overwrite: bool,
    batch_size: int = 64,
    echo: Callable[[str], None] = print,
) -> EnsembleSpec:
    """Write ``ensemble/cv-full`` from the finished full models and score it once on the test split."""
    from muratune.data.index import load_index

    cv = read_cv_spec(exp_dir, plan)
    names = list(cv.configurations)
    checkpoints = dict(zip(summary["trial_id"].astype(str), summary["checkpoint"], strict=True))
    sources = [Candidate(full_id(name), Path(str(checkpoints[full_id(name)]))) for name in names]
    members = [load_trained_model(c.checkpoint, name=c.name) for c in sources]
    weights = configuration_weights(cv)
    selection = OofSelection(cv.selected_strategy or CV_ENSEMBLE, weights, dict(cv.thresholds), {}, cv.calibration)
    index = load_index(config.data.root)  # type: ignore[arg-type]
    studies, metrics = score_on_test(members, weights, index, config, selection, cv.tta, batch_size, echo)
    spec = full_spec(cv, plan, weights, members, sources, metrics)
    files = {
        TEST_STUDIES: lambda path: studies.to_parquet(path, index=False),
        TEST_METRICS: lambda path: write_json(path, defined_or_none(metrics)),
    }
    folder = exp_dir / ENSEMBLE_DIR / CV_FULL_ENSEMBLE
    write_artifact(folder, EnsembleArtifact(spec, sources, files), overwrite)
    echo(
        f"cv-full ensemble ({len(members)} full model(s) of {', '.join(names)}): test_kappa "
        f"{metrics['test_kappa']:.3f}  test_auc {metrics['test_auc']:.3f}\nensemble: {folder}"
    )
    return spec
