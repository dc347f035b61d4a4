"""`muratune ensemble`: select members on internal val, write self-contained predictors, score them on the test split.

The library it calls: `muratune.ensemble.inputs` (candidates, test split), `muratune.ensemble.select` (strategies),
`muratune.ensemble.scoring` (thresholds, test metrics) and `muratune.ensemble.artifact` (writing an ensemble).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from muratune import __version__
from muratune.config import ExperimentConfig
from muratune.constants import BODY_PART
from muratune.ensemble.artifact import EnsembleArtifact, member_entries, used_members, write_artifact
from muratune.ensemble.calibration import calibrate, calibrated_thresholds, fit_calibration
from muratune.ensemble.inputs import Candidate, open_caches, read_candidates, test_frame, val_predictions
from muratune.ensemble.predictor import member_image_probs
from muratune.ensemble.scoring import scored_studies, test_metrics, test_score, tuned_thresholds, write_trials_test
from muratune.ensemble.select import STRATEGIES, ValPredictions, combine, create_strategy, ranking, study_matrix
from muratune.ensemble.trained import TrainedModel, load_trained_model
from muratune.errors import UserError
from muratune.experiment_folder import load_resolved_config
from muratune.fileio import refuse_existing, write_json
from muratune.layout import ENSEMBLE_DIR, TEST_METRICS, TEST_STUDIES, TRIALS_TEST_DIR
from muratune.lock import experiment_lock
from muratune.metrics import calibration_metrics, defined_or_none, study_metrics
from muratune.ranking import RANK_BY
from muratune.schemas import ENSEMBLE_FORMAT, DataConfig, EnsembleSpec


@dataclass
class EnsembleInputs:
    """Everything the strategies are chosen and scored on."""

    candidates: list[Candidate]
    models: list[TrainedModel]
    val: ValPredictions
    test: pd.DataFrame
    test_probs: np.ndarray


def prepare_inputs(
    exp_dir: Path, config: ExperimentConfig, tta: bool, batch_size: int, warn: Callable[[str], None]
) -> EnsembleInputs:
    """Load the candidates, align their internal-val predictions and predict the test split once with each."""
    from muratune.data.index import load_index

    candidates = read_candidates(exp_dir)
    models = [load_trained_model(c.checkpoint, name=c.name) for c in candidates]
    val_images, val_probs = val_predictions(candidates)
    index = load_index(config.data.root)  # type: ignore[arg-type]
    caches = open_caches(index, models, config)
    root = index.attrs["root"]
    if tta:  # the saved predictions are without TTA: recompute them so selection and thresholds see TTA too
        val_probs = member_image_probs(models, val_images, root, caches, True, batch_size)
    studies, study_probs = study_matrix(val_images, val_probs)
    test = test_frame(index, config)
    test_probs = member_image_probs(
        models, test, root, caches, tta, batch_size, progress=True, on_error=lambda msg: warn(f"warning: {msg}")
    )
    val = ValPredictions(studies, study_probs, [c.name for c in candidates])
    return EnsembleInputs(candidates, models, val, test, test_probs)


@dataclass
class EnsembleOptions:
    """The settings every strategy of one ``muratune ensemble`` run shares."""

    size: int
    tune_thresholds: bool
    tta: bool
    rank_by: str
    calibrate: bool = False


def build_strategy(name: str, inputs: EnsembleInputs, options: EnsembleOptions) -> EnsembleArtifact:
    """Select one strategy's weights on internal val and score it on the test split: the ensemble to write."""
    weights = create_strategy(name, options.size, options.rank_by).select(inputs.val)
    parts = list(inputs.val.studies[BODY_PART])
    val_probs = combine(inputs.val.probs, parts, weights)
    raw_thresholds = tuned_thresholds(inputs.val.studies, val_probs) if options.tune_thresholds else {}
    calibration = fit_calibration(inputs.val.studies, val_probs, "internal-val") if options.calibrate else None
    thresholds = calibrated_thresholds(raw_thresholds, calibration)
    val_studies = inputs.val.studies.assign(prob=calibrate(val_probs, parts, calibration))
    test_probs = combine(inputs.test_probs, list(inputs.test[BODY_PART]), weights)
    studies = scored_studies(inputs.test, test_probs, thresholds, calibration)
    metrics = test_metrics(studies, thresholds)
    used = used_members(weights)
    sources = [inputs.candidates[j] for j in used]
    spec = EnsembleSpec(
        format=ENSEMBLE_FORMAT,
        muratune_version=__version__,
        strategy=name,
        size=options.size,
        ranked_by=options.rank_by if name == "top-k-mean" else "kappa",
        tta=options.tta,
        calibration=calibration,
        thresholds=thresholds,
        threshold_default=0.5,
        tune_thresholds=options.tune_thresholds,
        weights={part: [float(w) for w in vector[used]] for part, vector in weights.items()},
        data_config=DataConfig.model_validate(inputs.models[used[0]].data_config),
        val_score=defined_or_none(
            study_metrics(val_studies, prefix="val", thresholds=thresholds) | calibration_metrics(val_studies, "val")
        ),
        test_score=test_score(metrics),
        members=member_entries([inputs.models[j] for j in used], sources),
    )
    files = {
        TEST_STUDIES: lambda path: studies.to_parquet(path, index=False),
        TEST_METRICS: lambda path: write_json(path, defined_or_none(metrics)),
    }
    return EnsembleArtifact(spec, sources, files)


def check_options(exp_dir: Path, names: Sequence[str], options: EnsembleOptions, overwrite: bool) -> None:
    """Refuse bad options and existing ensemble folders before any model is loaded."""
    if options.size < 1:
        raise UserError(f"--size {options.size}: must be at least 1")
    if options.rank_by not in RANK_BY:
        raise UserError(f"--rank-by {options.rank_by!r}: choose {' or '.join(RANK_BY)}")
    for name in names:
        create_strategy(name, options.size, options.rank_by)
        refuse_existing(exp_dir / ENSEMBLE_DIR / name, overwrite, kind="ensemble")


def write_strategy(exp_dir: Path, name: str, inputs: EnsembleInputs, options: EnsembleOptions, overwrite: bool) -> dict:
    """Build, write and test-score one strategy's ensemble; return its row of the printed table."""
    artifact = build_strategy(name, inputs, options)
    write_artifact(exp_dir / ENSEMBLE_DIR / name, artifact, overwrite)
    return {
        "strategy": name,
        "members": ",".join(m.name for m in artifact.spec.members),
        "val_kappa": artifact.spec.val_score["val_kappa"],
        "test_kappa": artifact.spec.test_score["test_kappa"],
        "test_ece": artifact.spec.test_score.get("test_ece"),
    }


def build_ensembles(
    experiment: str | os.PathLike,
    size: int = 5,
    strategies: Sequence[str] | None = None,
    tune_thresholds: bool = False,
    tta: bool = False,
    overwrite: bool = False,
    rank_by: str = "kappa",
    batch_size: int = 64,
    echo: Callable[[str], None] = print,
    calibrate: bool = False,
) -> pd.DataFrame:
    """Build, save and test-score ensembles of an experiment's best checkpoints.

    Selection and thresholds use only the internal-validation predictions; the test split (official valid) is
    scored once per strategy afterwards, and once per candidate trial (``trials_test/``).

    Args:
        experiment: the experiment folder written by ``muratune search``.
        size: the most members (greedy picks, or K of top-k-mean).
        strategies: strategy names (default: all of ``STRATEGIES``).
        tune_thresholds: tune a threshold per body part on internal val (else 0.5).
        tta: horizontal-flip test-time augmentation.
        overwrite: replace existing ensemble folders.
        rank_by: what top-k-mean ranks candidates by on internal val, ``kappa`` or ``loss``.
        batch_size: images per forward pass.
        echo: where progress lines go.
        calibrate: fit per-body-part temperature scaling of the study probability on internal val (thresholds
            are then stored in the calibrated space).

    Returns:
        One row per strategy: members, val and test kappa.
    """
    exp_dir = Path(experiment).expanduser().resolve()
    names = list(dict.fromkeys(strategies or STRATEGIES))
    options = EnsembleOptions(size, tune_thresholds, tta, rank_by, calibrate)
    check_options(exp_dir, names, options, overwrite)
    config = load_resolved_config(exp_dir)
    with experiment_lock(exp_dir, "ensemble"):
        inputs = prepare_inputs(exp_dir, config, tta, batch_size, echo)
        trials = write_trials_test(exp_dir, inputs.candidates, inputs.test, inputs.test_probs, tta)
        table = pd.DataFrame([write_strategy(exp_dir, name, inputs, options, overwrite) for name in names])
    echo(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    best = trials.loc[trials["trial_id"] == inputs.candidates[ranking(inputs.val)[0]].trial_id].iloc[0]
    echo(f"best single trial on internal val: {best['trial_id']} (test_kappa {best['test_kappa']:.3f})")
    echo(f"ensembles: {exp_dir / ENSEMBLE_DIR}\nsingle-trial test scores: {exp_dir / TRIALS_TEST_DIR}")
    return table
