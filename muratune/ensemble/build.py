"""The ensemble stage: select members on internal val, write self-contained predictors, score them on the test split."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from muratune import __version__
from muratune.config import ExperimentConfig, load_config
from muratune.constants import BODY_PART, LABEL, PRED, PROB, SPLIT, SPLIT_VALID, STUDY_PATH
from muratune.data.cache import ImageCache
from muratune.ensemble.predictor import aggregate, file_sha256, member_image_probs
from muratune.ensemble.select import (
    STRATEGIES,
    ValPredictions,
    Weights,
    align_image_predictions,
    combine,
    create_strategy,
    ranking,
    study_matrix,
)
from muratune.ensemble.spec import FORMAT_VERSION, TUNE_THRESHOLDS
from muratune.ensemble.trained import TrainedModel, load_trained_model
from muratune.errors import UserError
from muratune.fileio import atomic_dir, atomic_path, refuse_existing, write_json
from muratune.layout import (
    ENSEMBLE_DIR,
    ENSEMBLE_FILE,
    MEMBERS_DIR,
    MODEL_FILE,
    RESOLVED_CONFIG,
    SUMMARY_CSV,
    TEST_METRICS,
    TEST_STUDIES,
    TRIAL_FILE,
    TRIALS_TEST_DIR,
    TRIALS_TEST_METRICS,
    VAL_IMAGES_FILE,
    trial_dir,
)
from muratune.metrics import defined_or_none, study_metrics, tune_threshold


@dataclass
class Candidate:
    """One non-failed trial's best checkpoint (by internal-val kappa)."""

    trial_id: str
    checkpoint: Path

    @property
    def name(self) -> str:
        """TrainedModel name, also its folder name in an ensemble: ``trial_<id>``."""
        return f"trial_{self.trial_id}"


# ------------------------------------------------------------------------------------------------ inputs
def read_candidates(exp_dir: Path) -> list[Candidate]:
    """Candidates from ``search_summary.csv``: every trial not FAILed that has a best checkpoint on disk."""
    summary_path = exp_dir / SUMMARY_CSV
    if not summary_path.is_file():
        raise UserError(f"{summary_path}: not found; run `muratune search` first (is {exp_dir} an experiment?)")
    summary = pd.read_csv(summary_path, dtype={"trial_id": str})
    candidates = []
    for row in summary.itertuples():
        if row.state == "FAIL" or not isinstance(row.checkpoint, str) or not row.checkpoint:
            continue
        path = Path(row.checkpoint)
        if not path.is_dir():  # the experiment folder was moved: look for the checkpoint where it is now
            path = trial_dir(exp_dir, str(row.trial_id)) / path.name
        if not (path / MODEL_FILE).is_file():
            raise UserError(f"{row.checkpoint}: checkpoint of trial {row.trial_id} not found")
        candidates.append(Candidate(str(row.trial_id), path))
    if not candidates:
        raise UserError(f"{summary_path}: no trial with a checkpoint to ensemble (all failed?)")
    return candidates


def load_experiment_config(exp_dir: Path) -> ExperimentConfig:
    """The experiment's resolved config."""
    path = exp_dir / RESOLVED_CONFIG
    if not path.is_file():
        raise UserError(f"{path}: not found; is {exp_dir} a muratune experiment folder?")
    return load_config(path)


def open_caches(index: pd.DataFrame, models: Sequence[TrainedModel], config: ExperimentConfig) -> list[ImageCache]:
    """Open (building if needed) the image cache at each model's input size and resize mode."""
    from muratune.data.cache import build_cache

    keys = sorted({(m.image_size, str(m.data_config["resize_mode"])) for m in models})
    return [
        build_cache(index, size, mode, cache_dir=config.data.cache_dir, skip_bad_images=True, progress=False)
        for size, mode in keys
    ]


def val_predictions(candidates: Sequence[Candidate]) -> tuple[pd.DataFrame, np.ndarray]:
    """Image rows and ``n_images x n_candidates`` internal-val probabilities saved with the checkpoints."""
    frames = []
    for cand in candidates:
        path = cand.checkpoint / VAL_IMAGES_FILE
        if not path.is_file():
            raise UserError(f"{path}: internal-validation predictions of trial {cand.trial_id} not found")
        frames.append(pd.read_parquet(path))
    return align_image_predictions(frames, [c.name for c in candidates])


def test_frame(index: pd.DataFrame, config: ExperimentConfig) -> pd.DataFrame:
    """The held-out test split (the official valid split), restricted to the experiment's body parts."""
    test = index[index[SPLIT] == SPLIT_VALID]
    if config.data.body_parts:
        test = test[test[BODY_PART].isin(config.data.body_parts)]
    if test.empty:
        raise UserError(f"{config.data.root}: the test split (official {SPLIT_VALID}) has no images")
    return test.reset_index(drop=True)


# ------------------------------------------------------------------------------------------------ scoring
def tuned_thresholds(studies: pd.DataFrame, probs: np.ndarray) -> dict[str, float]:
    """Per-body-part thresholds maximising internal-val study kappa."""
    parts = studies[BODY_PART].to_numpy()
    labels = studies[LABEL].to_numpy(dtype=int)
    return {str(part): tune_threshold(labels[parts == part], probs[parts == part]) for part in sorted(set(parts))}


def scored_studies(images: pd.DataFrame, probs: np.ndarray, thresholds: dict[str, float]) -> pd.DataFrame:
    """Study predictions beside the true labels: ``study_path, body_part, label, prob, pred, threshold, n_views``."""
    studies = aggregate(images, probs, thresholds).rename(columns={LABEL: PRED})
    truth = images.groupby(STUDY_PATH, sort=False)[LABEL].first()
    studies.insert(2, LABEL, studies[STUDY_PATH].map(truth).astype(int))
    return studies


def test_metrics(studies: pd.DataFrame, thresholds: dict[str, float]) -> dict[str, float]:
    """Study metrics on the test split with the thresholds applied (unpredictable studies count as wrong)."""
    frame = studies.copy()
    missing = frame[PROB].isna()
    frame.loc[missing, PROB] = 1.0 - frame.loc[missing, LABEL]  # an unreadable study is scored as a miss
    return study_metrics(frame, prefix="test", thresholds=thresholds)


def write_trials_test(
    exp_dir: Path, candidates: Sequence[Candidate], test: pd.DataFrame, probs: np.ndarray, tta: bool
) -> pd.DataFrame:
    """Score every candidate alone on the test split: ``trials_test/<trial_id>.parquet`` and ``metrics.csv``."""
    folder = exp_dir / TRIALS_TEST_DIR
    rows = []
    for j, cand in enumerate(candidates):
        studies = scored_studies(test, probs[:, j], {})
        with atomic_path(folder / f"{cand.trial_id}.parquet") as tmp:
            studies.to_parquet(tmp, index=False)
        rows.append(
            {"trial_id": cand.trial_id, "checkpoint": str(cand.checkpoint), "tta": tta, **test_metrics(studies, {})}
        )
    table = pd.DataFrame(rows)
    with atomic_path(folder / TRIALS_TEST_METRICS) as tmp:
        table.to_csv(tmp, index=False)
    return table


# ------------------------------------------------------------------------------------------------ artifact
def used_members(weights: Weights) -> np.ndarray:
    """Indices of the candidates with a positive weight for some body part."""
    return np.flatnonzero(np.any(np.stack(list(weights.values())) > 0, axis=0))


def write_artifact(
    target: Path,
    spec: dict,
    members: Sequence[TrainedModel],
    sources: Sequence[Candidate],
    files: dict[str, Callable[[Path], None]],
    overwrite: bool,
) -> None:
    """Write an ensemble folder atomically: ``ensemble.json``, ``members/<name>/`` copies and extra files.

    Args:
        target: the ensemble folder.
        spec: ``ensemble.json`` content without ``members`` (filled here).
        members: the used members, in weight order.
        sources: their checkpoints.
        files: extra file name -> writer(path).
        overwrite: replace an existing folder.
    """
    with atomic_dir(target, overwrite=overwrite, kind="ensemble") as tmp:
        entries = []
        for member, cand in zip(members, sources, strict=True):
            folder = tmp / MEMBERS_DIR / member.name
            folder.mkdir(parents=True)
            shutil.copy2(cand.checkpoint / MODEL_FILE, folder / MODEL_FILE)
            shutil.copy2(cand.checkpoint / TRIAL_FILE, folder / TRIAL_FILE)
            entries.append(
                {
                    "name": member.name,
                    "path": f"{MEMBERS_DIR}/{member.name}",
                    "trial_id": cand.trial_id,
                    "backbone": member.trial.get("backbone"),
                    "data_config": member.data_config,
                    "sha256": file_sha256(folder / MODEL_FILE),
                    "source": str(cand.checkpoint),
                }
            )
        write_json(tmp / ENSEMBLE_FILE, {**spec, "members": entries})
        for name, writer in files.items():
            writer(tmp / name)


# ------------------------------------------------------------------------------------------------ stage
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


def build_strategy(
    name: str, inputs: EnsembleInputs, size: int, tune_thresholds: bool, tta: bool, by: str
) -> tuple[dict, dict]:
    """Select one strategy's weights; return its ``ensemble.json`` spec and extra files."""
    weights = create_strategy(name, size, by).select(inputs.val)
    val_probs = combine(inputs.val.probs, list(inputs.val.studies[BODY_PART]), weights)
    thresholds = tuned_thresholds(inputs.val.studies, val_probs) if tune_thresholds else {}
    val_studies = inputs.val.studies.assign(prob=val_probs)
    test_probs = combine(inputs.test_probs, list(inputs.test[BODY_PART]), weights)
    studies = scored_studies(inputs.test, test_probs, thresholds)
    metrics = test_metrics(studies, thresholds)
    used = used_members(weights)
    spec = {
        "format": FORMAT_VERSION,
        "muratune_version": __version__,
        "strategy": name,
        "size": size,
        "ranked_by": by if name == "top-k-mean" else "kappa",
        "tta": tta,
        "thresholds": thresholds,
        "threshold_default": 0.5,
        TUNE_THRESHOLDS: tune_thresholds,
        "weights": {part: [float(w) for w in vector[used]] for part, vector in weights.items()},
        "data_config": inputs.models[used[0]].data_config,
        "val_score": defined_or_none(study_metrics(val_studies, prefix="val", thresholds=thresholds)),
        "test_score": defined_or_none({k: metrics[k] for k in ("test_kappa", "test_auc", "test_accuracy")}),
        "_used": [int(j) for j in used],
    }
    files = {
        TEST_STUDIES: lambda path: studies.to_parquet(path, index=False),
        TEST_METRICS: lambda path: write_json(path, defined_or_none(metrics)),
    }
    return spec, files


def check_options(exp_dir: Path, names: Sequence[str], size: int, by: str, overwrite: bool) -> None:
    """Refuse bad options and existing ensemble folders before any model is loaded."""
    if size < 1:
        raise UserError(f"--size {size}: must be at least 1")
    if by not in ("kappa", "loss"):
        raise UserError(f"--rank-by {by!r}: choose kappa or loss")
    for name in names:
        create_strategy(name, size, by)
        refuse_existing(exp_dir / ENSEMBLE_DIR / name, overwrite, kind="ensemble")


def write_strategy(exp_dir: Path, name: str, inputs: EnsembleInputs, options: dict, overwrite: bool) -> dict:
    """Build, write and test-score one strategy's ensemble; return its row of the printed table."""
    spec, files = build_strategy(name, inputs, **options)
    used = spec.pop("_used")
    members = [inputs.models[j] for j in used]
    sources = [inputs.candidates[j] for j in used]
    write_artifact(exp_dir / ENSEMBLE_DIR / name, spec, members, sources, files, overwrite)
    return {
        "strategy": name,
        "members": ",".join(m.name for m in members),
        "val_kappa": spec["val_score"]["val_kappa"],
        "test_kappa": spec["test_score"]["test_kappa"],
    }


def build_ensembles(
    experiment: str | os.PathLike,
    size: int = 5,
    strategies: Sequence[str] | None = None,
    tune_thresholds: bool = False,
    tta: bool = False,
    overwrite: bool = False,
    by: str = "kappa",
    batch_size: int = 64,
    echo: Callable[[str], None] = print,
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
        by: top-k-mean ranking, ``kappa`` or ``loss``.
        batch_size: images per forward pass.
        echo: where progress lines go.

    Returns:
        One row per strategy: members, val and test kappa.
    """
    exp_dir = Path(experiment).expanduser().resolve()
    names = list(dict.fromkeys(strategies or STRATEGIES))
    check_options(exp_dir, names, size, by, overwrite)
    config = load_experiment_config(exp_dir)
    inputs = prepare_inputs(exp_dir, config, tta, batch_size, echo)
    trials = write_trials_test(exp_dir, inputs.candidates, inputs.test, inputs.test_probs, tta)
    options = {"size": size, "tune_thresholds": tune_thresholds, "tta": tta, "by": by}
    table = pd.DataFrame([write_strategy(exp_dir, name, inputs, options, overwrite) for name in names])
    echo(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    best = trials.loc[trials["trial_id"] == inputs.candidates[ranking(inputs.val)[0]].trial_id].iloc[0]
    echo(f"best single trial on internal val: {best['trial_id']} (test_kappa {best['test_kappa']:.3f})")
    echo(f"ensembles: {exp_dir / ENSEMBLE_DIR}\nsingle-trial test scores: {exp_dir / TRIALS_TEST_DIR}")
    return table
