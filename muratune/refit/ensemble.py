"""The cv ensemble: strategy, members and thresholds chosen on out-of-fold predictions; all fold models kept."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from muratune import __version__
from muratune.config import ExperimentConfig
from muratune.constants import BODY_PART
from muratune.data.split import FOLD
from muratune.ensemble.build import (
    Candidate,
    open_caches,
    scored_studies,
    test_frame,
    test_metrics,
    tuned_thresholds,
    used_members,
    write_artifact,
)
from muratune.ensemble.predictor import member_image_probs
from muratune.ensemble.select import ValPredictions, Weights, combine, create_strategy
from muratune.ensemble.spec import FORMAT_VERSION, GLOBAL, TUNE_THRESHOLDS
from muratune.ensemble.trained import load_trained_model
from muratune.fileio import write_json
from muratune.layout import CV_ENSEMBLE as CV
from muratune.layout import ENSEMBLE_DIR, TEST_METRICS, TEST_STUDIES
from muratune.metrics import defined_or_none, study_metrics
from muratune.refit.oof import OutOfFold, assemble_oof, fold_checkpoints
from muratune.refit.plan import RefitPlan, member_id, refit_dir

CV_STRATEGIES = ("greedy", "greedy-per-body-part")  # tried in this order; a tie keeps the simpler one


def select_on_oof(oof: ValPredictions, size: int, tune: bool) -> tuple[str, Weights, dict[str, float], dict]:
    """Run each strategy on the out-of-fold predictions; keep the one with the best out-of-fold kappa.

    Returns:
        The strategy's name, its per-configuration weights, its thresholds and its out-of-fold metrics.
    """
    best: tuple[str, Weights, dict[str, float], dict] | None = None
    parts = list(oof.studies[BODY_PART])
    for name in CV_STRATEGIES:
        weights = create_strategy(name, size).select(oof)
        probs = combine(oof.probs, parts, weights)
        thresholds = tuned_thresholds(oof.studies, probs) if tune else {}
        score = study_metrics(oof.studies.assign(prob=probs), prefix="oof", thresholds=thresholds)
        if best is None or score["oof_kappa"] > best[3]["oof_kappa"]:
            best = (name, weights, thresholds, score)
    assert best is not None
    return best


def fold_weights(weights: Weights, used: np.ndarray, folds: int) -> Weights:
    """Member weights: each used configuration's weight split equally over its fold models (configuration-major)."""
    return {part: np.repeat(vector[used] / folds, folds) for part, vector in weights.items()}


def oof_with_tta(
    oof: OutOfFold, summary: pd.DataFrame, plan: RefitPlan, index: pd.DataFrame, config: ExperimentConfig,
    batch_size: int, echo: Callable[[str], None],
) -> OutOfFold:  # fmt: skip
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
                [model], oof.images[rows], index.attrs["root"], caches, True, batch_size,
                on_error=lambda msg: echo(f"warning: {msg}"),
            )[:, 0]  # fmt: skip
    return OutOfFold(oof.images, probs, oof.names)


def cv_spec(
    plan: RefitPlan, strategy: str, size: int, thresholds: dict[str, float], tune: bool, tta: bool = False
) -> dict:
    """The settings part of the cv ensemble's ``ensemble.json``."""
    return {
        "format": FORMAT_VERSION,
        "muratune_version": __version__,
        "strategy": CV,
        "selected_strategy": strategy,
        "size": size,
        "ranked_by": "kappa",
        "tta": tta,
        "thresholds": thresholds,
        "threshold_default": 0.5,
        TUNE_THRESHOLDS: tune,
        "folds": plan.folds,
        "epochs": plan.epochs,
    }


def scores(oof_score: dict, test: dict) -> dict:
    """The ``oof_score`` and ``test_score`` parts of ``ensemble.json`` (undefined metrics as null)."""
    return {
        "oof_score": defined_or_none(oof_score),
        "test_score": defined_or_none({k: test[k] for k in ("test_kappa", "test_auc", "test_accuracy")}),
    }


def build_cv_ensemble(
    exp_dir: Path,
    config: ExperimentConfig,
    plan: RefitPlan,
    summary: pd.DataFrame,
    size: int,
    tune: bool,
    overwrite: bool,
    echo: Callable[[str], None] = print,
    batch_size: int = 64,
    tta: bool = False,
    configurations: list[str] | None = None,
    dropped: dict[str, str] | None = None,
) -> dict:
    """Select on out-of-fold predictions, write ``ensemble/cv`` and score it once on the test split.

    With ``tta`` the ensemble predicts with horizontal-flip TTA, and is selected on out-of-fold predictions made
    the same way (`oof_with_tta`). ``configurations`` are the candidates (default: all of the plan's); ``dropped``
    records the ones left out for a failed fold model, with its error.

    Returns:
        The ``ensemble.json`` content (without members).
    """
    from muratune.data.index import load_index

    names = configurations or [c.trial_id for c in plan.configurations]
    index = load_index(config.data.root)  # type: ignore[arg-type]
    oof = assemble_oof(refit_dir(exp_dir), config, names, plan.folds, plan.split_seed, summary)
    if tta:
        oof = oof_with_tta(oof, summary, plan, index, config, batch_size, echo)
    strategy, weights, thresholds, oof_score = select_on_oof(oof.studies(), size, tune)
    used = used_members(weights)
    sources = [
        Candidate(member_id(names[j], k), Path(_checkpoint(summary, names[j], k)))
        for j in used
        for k in range(plan.folds)
    ]
    members = [load_trained_model(c.checkpoint, name=c.name) for c in sources]
    member_weights = fold_weights(weights, used, plan.folds)
    studies, metrics = score_on_test(members, member_weights, index, config, thresholds, tta, batch_size, echo)
    spec = {
        **cv_spec(plan, strategy, size, thresholds, tune, tta),
        "weights": {part: [float(w) for w in vector] for part, vector in member_weights.items()},
        "data_config": members[0].data_config,
        "configurations": {names[j]: float(weights[GLOBAL][j]) for j in used},
        "dropped_configurations": dropped or {},
        **scores(oof_score, metrics),
    }
    files = {
        TEST_STUDIES: lambda path: studies.to_parquet(path, index=False),
        TEST_METRICS: lambda path: write_json(path, defined_or_none(metrics)),
    }
    write_artifact(exp_dir / ENSEMBLE_DIR / CV, spec, members, sources, files, overwrite)
    echo(announcement(spec, len(members), oof_score, metrics, exp_dir / ENSEMBLE_DIR / CV))
    return spec


def announcement(spec: dict, members: int, oof: dict, test: dict, folder: Path) -> str:
    """The lines that say what the cv ensemble is, how it scored, and where it is."""
    with_tta = " with TTA" if spec["tta"] else ""
    return (
        f"cv ensemble ({spec['selected_strategy']} on out-of-fold predictions{with_tta}, {members} fold models of "
        f"{', '.join(spec['configurations'])}): oof_kappa {oof['oof_kappa']:.3f}  "
        f"test_kappa {test['test_kappa']:.3f}  test_auc {test['test_auc']:.3f}\nensemble: {folder}"
    )


def score_on_test(
    members: list, weights: Weights, index: pd.DataFrame, config: ExperimentConfig, thresholds: dict[str, float],
    tta: bool, batch_size: int, echo: Callable[[str], None],
) -> tuple[pd.DataFrame, dict]:  # fmt: skip
    """The ensemble's study predictions on the test split (the official valid split), and their metrics."""
    test = test_frame(index, config)
    probs = member_image_probs(
        members, test, index.attrs["root"], open_caches(index, members, config), tta, batch_size,
        progress=True, on_error=lambda msg: echo(f"warning: {msg}"),
    )  # fmt: skip
    studies = scored_studies(test, combine(probs, list(test[BODY_PART]), weights), thresholds)
    return studies, test_metrics(studies, thresholds)


def _checkpoint(summary: pd.DataFrame, configuration: str, fold: int) -> str:
    rows = summary[(summary["configuration"] == configuration) & (summary["fold"] == fold)]
    return str(rows["checkpoint"].iloc[0])
