"""The cv ensemble: strategy, members and thresholds chosen on out-of-fold predictions; all fold models kept."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from muratune import __version__
from muratune.config import ExperimentConfig
from muratune.constants import BODY_PART
from muratune.data.split import FOLD
from muratune.ensemble.artifact import EnsembleArtifact, member_entries, used_members, write_artifact
from muratune.ensemble.calibration import calibrate, calibrated_thresholds, fit_calibration
from muratune.ensemble.inputs import Candidate, open_caches, test_frame
from muratune.ensemble.predictor import member_image_probs
from muratune.ensemble.scoring import scored_studies, test_metrics, test_score, tuned_thresholds
from muratune.ensemble.select import ValPredictions, Weights, combine, create_strategy
from muratune.ensemble.trained import TrainedModel, load_trained_model
from muratune.fileio import write_json
from muratune.layout import CV_ENSEMBLE as CV
from muratune.layout import ENSEMBLE_DIR, TEST_METRICS, TEST_STUDIES
from muratune.metrics import calibration_metrics, defined_or_none, study_metrics
from muratune.refit.oof import OutOfFold, assemble_oof, fold_checkpoints
from muratune.refit.plan import RefitPlan, member_id, refit_dir
from muratune.schemas import ENSEMBLE_FORMAT, GLOBAL_WEIGHTS, CalibrationSpec, DataConfig, EnsembleSpec

CV_STRATEGIES = ("greedy", "greedy-per-body-part")  # tried in this order; a tie keeps the simpler one


@dataclass
class OofSelection:
    """The strategy chosen on out-of-fold predictions: its per-configuration weights, thresholds and metrics.

    With a calibration (fitted on the same predictions), the thresholds and ``oof_score`` are in its space.
    """

    strategy: str
    weights: Weights
    thresholds: dict[str, float]
    oof_score: dict[str, float]
    calibration: CalibrationSpec | None = None


@dataclass(frozen=True)
class CvSettings:
    """How one cv ensemble is chosen and written (from ``muratune refit``'s options).

    Attributes:
        size: the most greedy picks of the out-of-fold selection.
        tune_thresholds: tune one threshold per body part on the out-of-fold predictions (else 0.5).
        tta: predict with horizontal-flip TTA, and select on out-of-fold predictions made the same way.
        calibrate: fit per-body-part temperature scaling of the study probability on the out-of-fold predictions.
        overwrite: replace an existing ``ensemble/cv``.
        batch_size: images per forward pass.
        configurations: the candidate configurations (default: all of the plan's).
        dropped_configurations: the ones left out for a failed fold model, with its error.
    """

    size: int = 5
    tune_thresholds: bool = True
    tta: bool = False
    calibrate: bool = True
    overwrite: bool = False
    batch_size: int = 64
    configurations: tuple[str, ...] | None = None
    dropped_configurations: dict[str, str] = field(default_factory=dict)


def select_on_oof(oof: ValPredictions, size: int, tune_thresholds: bool) -> OofSelection:
    """Run each strategy on the out-of-fold predictions; keep the one with the best out-of-fold kappa."""
    best: OofSelection | None = None
    parts = list(oof.studies[BODY_PART])
    for name in CV_STRATEGIES:
        weights = create_strategy(name, size).select(oof)
        probs = combine(oof.probs, parts, weights)
        thresholds = tuned_thresholds(oof.studies, probs) if tune_thresholds else {}
        score = study_metrics(oof.studies.assign(prob=probs), prefix="oof", thresholds=thresholds)
        if best is None or score["oof_kappa"] > best.oof_score["oof_kappa"]:
            best = OofSelection(name, weights, thresholds, score)
    assert best is not None
    return best


def calibrated_selection(oof: ValPredictions, selection: OofSelection) -> OofSelection:
    """The selection with a temperature scaling fitted on its out-of-fold probabilities, thresholds mapped through it.

    Kappa and AUC do not change (the map is monotone); ``oof_score`` gains ``oof_ece`` and ``oof_brier``.
    """
    parts = list(oof.studies[BODY_PART])
    probs = combine(oof.probs, parts, selection.weights)
    calibration = fit_calibration(oof.studies, probs, "out-of-fold")
    thresholds = calibrated_thresholds(selection.thresholds, calibration)
    studies = oof.studies.assign(prob=calibrate(probs, parts, calibration))
    score = study_metrics(studies, prefix="oof", thresholds=thresholds) | calibration_metrics(studies, "oof")
    return OofSelection(selection.strategy, selection.weights, thresholds, score, calibration)


def fold_weights(weights: Weights, used: np.ndarray, folds: int) -> Weights:
    """Member weights: each used configuration's weight split equally over its fold models (configuration-major)."""
    return {part: np.repeat(vector[used] / folds, folds) for part, vector in weights.items()}


def oof_with_tta(
    oof: OutOfFold,
    summary: pd.DataFrame,
    plan: RefitPlan,
    index: pd.DataFrame,
    config: ExperimentConfig,
    batch_size: int,
    echo: Callable[[str], None],
) -> OutOfFold:
    """The out-of-fold predictions again with horizontal-flip TTA: each fold model on its own held-out fold.

    The fold models saved their held-out predictions without TTA; an ensemble that predicts with TTA must be
    selected and thresholded on TTA predictions too (as ``muratune ensemble --tta`` does on internal val).
    """
    checkpoints = fold_checkpoints(summary, oof.names, plan.folds)
    folds = oof.images[FOLD].to_numpy()
    probs = np.full_like(oof.probs, np.nan)
    for j, name in enumerate(oof.names):
        echo(f"out-of-fold predictions with TTA: configuration {name} ({j + 1}/{len(oof.names)})")
        models = [load_trained_model(checkpoints[(name, k)], name=member_id(name, k)) for k in range(plan.folds)]
        caches = open_caches(index, models, config)
        for k, model in enumerate(models):
            rows = folds == k
            probs[rows, j] = member_image_probs(
                [model],
                oof.images[rows],
                index.attrs["root"],
                caches,
                True,
                batch_size,
                on_error=lambda msg: echo(f"warning: {msg}"),
            )[:, 0]
    return OutOfFold(oof.images, probs, oof.names)


def cv_spec(
    plan: RefitPlan,
    selection: OofSelection,
    settings: CvSettings,
    configurations: Sequence[str],
    members: Sequence[TrainedModel],
    sources: Sequence[Candidate],
    test: dict[str, float],
) -> EnsembleSpec:
    """The cv ensemble's ``ensemble.json``: the selection on out-of-fold predictions and its fold models.

    Args:
        plan: the refit's plan (folds, epochs).
        selection: what was chosen on the out-of-fold predictions, per candidate configuration.
        settings: the refit's ensemble options.
        configurations: the candidate configurations (trial ids), in the order of the selection's weights.
        members: the used configurations' fold models, configuration-major.
        sources: their checkpoints.
        test: the ensemble's test metrics.
    """
    used = used_members(selection.weights)
    member_weights = fold_weights(selection.weights, used, plan.folds)
    return EnsembleSpec(
        format=ENSEMBLE_FORMAT,
        muratune_version=__version__,
        strategy=CV,
        selected_strategy=selection.strategy,
        size=settings.size,
        ranked_by="kappa",
        tta=settings.tta,
        calibration=selection.calibration,
        thresholds=selection.thresholds,
        threshold_default=0.5,
        tune_thresholds=settings.tune_thresholds,
        folds=plan.folds,
        epochs=plan.epochs,
        weights={part: [float(w) for w in vector] for part, vector in member_weights.items()},
        data_config=DataConfig.model_validate(members[0].data_config),
        configurations={configurations[j]: float(selection.weights[GLOBAL_WEIGHTS][j]) for j in used},
        dropped_configurations=settings.dropped_configurations,
        oof_score=defined_or_none(selection.oof_score),
        test_score=test_score(test),
        members=member_entries(members, sources),
    )


def build_cv_ensemble(
    exp_dir: Path,
    config: ExperimentConfig,
    plan: RefitPlan,
    summary: pd.DataFrame,
    settings: CvSettings = CvSettings(),
    echo: Callable[[str], None] = print,
) -> dict:
    """Select on out-of-fold predictions, write ``ensemble/cv`` and score it once on the test split.

    With ``settings.tta`` the ensemble predicts with horizontal-flip TTA, and is selected on out-of-fold predictions
    made the same way (`oof_with_tta`); with ``settings.calibrate`` a per-body-part temperature scaling of the study
    probability is fitted on the out-of-fold predictions (`calibrated_selection`).

    Returns:
        The ``ensemble.json`` content.
    """
    from muratune.data.index import load_index

    names = list(settings.configurations or [c.trial_id for c in plan.configurations])
    tta, batch_size = settings.tta, settings.batch_size
    index = load_index(config.data.root)  # type: ignore[arg-type]
    oof = assemble_oof(refit_dir(exp_dir), config, names, plan.folds, plan.split_seed, summary)
    if tta:
        oof = oof_with_tta(oof, summary, plan, index, config, batch_size, echo)
    oof_studies = oof.studies()
    selection = select_on_oof(oof_studies, settings.size, settings.tune_thresholds)
    if settings.calibrate:
        selection = calibrated_selection(oof_studies, selection)
    used = used_members(selection.weights)
    sources = [
        Candidate(member_id(names[j], k), Path(_checkpoint(summary, names[j], k)))
        for j in used
        for k in range(plan.folds)
    ]
    members = [load_trained_model(c.checkpoint, name=c.name) for c in sources]
    member_weights = fold_weights(selection.weights, used, plan.folds)
    studies, metrics = score_on_test(members, member_weights, index, config, selection, tta, batch_size, echo)
    spec = cv_spec(plan, selection, settings, names, members, sources, metrics)
    files = {
        TEST_STUDIES: lambda path: studies.to_parquet(path, index=False),
        TEST_METRICS: lambda path: write_json(path, defined_or_none(metrics)),
    }
    write_artifact(exp_dir / ENSEMBLE_DIR / CV, EnsembleArtifact(spec, sources, files), settings.overwrite)
    echo(announcement(spec, selection.oof_score, metrics, exp_dir / ENSEMBLE_DIR / CV))
    return spec.to_json()


def announcement(spec: EnsembleSpec, oof: dict, test: dict, folder: Path) -> str:
    """The lines that say what the cv ensemble is, how it scored (raw scores: NaN, not null), and where it is."""
    with_tta = " with TTA" if spec.tta else ""
    return (
        f"cv ensemble ({spec.selected_strategy} on out-of-fold predictions{with_tta}, {len(spec.members)} fold models "
        f"of {', '.join(spec.configurations)}): oof_kappa {oof['oof_kappa']:.3f}  "
        f"test_kappa {test['test_kappa']:.3f}  test_auc {test['test_auc']:.3f}\nensemble: {folder}"
    )


def score_on_test(
    members: list,
    weights: Weights,
    index: pd.DataFrame,
    config: ExperimentConfig,
    selection: OofSelection,
    tta: bool,
    batch_size: int,
    echo: Callable[[str], None],
) -> tuple[pd.DataFrame, dict]:
    """The ensemble's study predictions on the test split (the official valid split), and their metrics.

    The probabilities are calibrated with the selection's calibration (if any), and its thresholds applied.
    """
    test = test_frame(index, config)
    caches = open_caches(index, members, config)
    probs = member_image_probs(
        members,
        test,
        index.attrs["root"],
        caches,
        tta,
        batch_size,
        progress=True,
        on_error=lambda msg: echo(f"warning: {msg}"),
    )
    combined = combine(probs, list(test[BODY_PART]), weights)
    studies = scored_studies(test, combined, selection.thresholds, selection.calibration)
    return studies, test_metrics(studies, selection.thresholds)


def _checkpoint(summary: pd.DataFrame, configuration: str, fold: int) -> str:
    rows = summary[(summary["configuration"] == configuration) & (summary["fold"] == fold)]
    return str(rows["checkpoint"].iloc[0])
