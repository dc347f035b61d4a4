"""Why a cv ensemble loses to the best single trial: each suspect measured on a hard-bench variant's saved models.

Nothing is trained. Per seed of ``python -m bench.refit_cv`` in hard mode, for one refit variant, it measures:

- epochs: each fold model's held-out-fold kappa and AUC at its last epoch against its best epoch (``result.json``),
  and the search trial's best epoch for the same configuration;
- fold size: each fold model's test AUC and kappa against its configuration's search trial (``trials_test``);
- selection: the cv ensemble built from the best configuration's fold models only, against the selected one;
- thresholds: the cv ensemble's members and weights, uncalibrated, with per-body-part thresholds tuned on the
  out-of-fold predictions (what cv does; its calibration maps them without changing a label), one global
  threshold tuned on them, and 0.5; the uncalibrated test AUC beside cv's calibrated one.

    python -m bench.refit_diagnose --out runs/bench/refit-hard --variant top2-folds3 --seeds 0,1,2,3,4
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import pandas as pd

from muratune.constants import BODY_PART, LABEL, PROB
from muratune.ensemble.inputs import open_caches, test_frame
from muratune.ensemble.predictor import member_image_probs
from muratune.ensemble.scoring import tuned_thresholds
from muratune.ensemble.select import combine, study_matrix
from muratune.ensemble.trained import load_trained_model
from muratune.experiment_folder import load_resolved_config
from muratune.fileio import write_json
from muratune.layout import (
    CV_ENSEMBLE,
    ENSEMBLE_DIR,
    ENSEMBLE_FILE,
    REFIT_DIR,
    REFIT_PLAN,
    REFIT_SUMMARY,
    SUMMARY_CSV,
    TRIALS_TEST_DIR,
    TRIALS_TEST_METRICS,
)
from muratune.metrics import study_metrics, tune_threshold
from muratune.refit.oof import assemble_oof
from muratune.refit.plan import RefitPlan

IDS = {"trial_id": str, "configuration": str}


def epoch_curve(trial_dir: Path) -> pd.DataFrame:
    """A trial's per-epoch validation kappa and AUC (held-out fold for a fold model), from its ``result.json``."""
    rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]
    return pd.DataFrame(rows)[["epoch", "val_kappa", "val_auc"]]


def epoch_rows(exp: Path, refits: pd.DataFrame) -> list[dict]:
    """Per fold model: last and best held-out-fold kappa/AUC, the best epoch, and its search trial's best epoch."""
    search = pd.read_csv(exp / SUMMARY_CSV, dtype={"trial_id": str}).set_index("trial_id")
    rows = []
    for fold in refits.itertuples():
        curve = epoch_curve(Path(str(fold.trial_dir)))
        best = curve.loc[curve["val_kappa"].idxmax()]
        trial = epoch_curve(Path(str(search.loc[fold.configuration, "trial_dir"])))
        rows.append(
            {
                "fold_model": fold.trial_id,
                "epochs": int(curve["epoch"].iloc[-1]),
                "last_kappa": float(curve["val_kappa"].iloc[-1]),
                "best_kappa": float(best["val_kappa"]),
                "best_kappa_epoch": int(best["epoch"]),
                "last_auc": float(curve["val_auc"].iloc[-1]),
                "best_auc": float(curve["val_auc"].max()),
                "best_auc_epoch": int(curve.loc[curve["val_auc"].idxmax(), "epoch"]),
                "search_best_epoch": int(search.loc[fold.configuration, "best_epoch"]),
                "search_epochs": int(search.loc[fold.configuration, "epochs"]),
                "search_last_kappa": float(trial["val_kappa"].iloc[-1]),
                "search_best_kappa": float(trial["val_kappa"].max()),
            }
        )
    return rows


def fold_test_probs(exp: Path, refits: pd.DataFrame, names: list[str], folds: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Every fold model's test study probabilities: the test studies and an ``n_studies x (configs * folds)`` matrix."""
    from muratune.data.index import load_index

    config = load_resolved_config(exp)
    index = load_index(config.data.root)  # type: ignore[arg-type]
    checkpoints = refits.set_index("trial_id")["checkpoint"]
    models = [
        load_trained_model(Path(checkpoints[f"{n}_fold{k}"]), name=f"{n}_fold{k}") for n in names for k in range(folds)
    ]
    test = test_frame(index, config)
    probs = member_image_probs(models, test, index.attrs["root"], open_caches(index, models, config), False, 256)
    return study_matrix(test, probs)


def kappa_auc(studies: pd.DataFrame, probs: np.ndarray, thresholds: dict[str, float] | None = None) -> dict:
    """Test kappa and AUC of study probabilities with per-body-part thresholds (0.5 by default)."""
    metrics = study_metrics(studies.assign(**{PROB: probs}), prefix="test", thresholds=thresholds)
    return {"kappa": metrics["test_kappa"], "auc": metrics["test_auc"]}


def diagnose_seed(exp: Path, copy: Path) -> dict:
    """Every suspect's figures for one seed (``exp`` its search, ``copy`` the variant's refit)."""
    plan = RefitPlan.read(copy / REFIT_DIR / REFIT_PLAN)
    refits = pd.read_csv(copy / REFIT_DIR / REFIT_SUMMARY, dtype=IDS)
    names = [c.trial_id for c in plan.configurations]
    folds = plan.folds
    oof = assemble_oof(copy / REFIT_DIR, load_resolved_config(copy), names, folds, plan.split_seed, refits).studies()
    studies, fold_probs = fold_test_probs(copy, refits, names, folds)
    config_probs = np.stack([fold_probs[:, j * folds : (j + 1) * folds].mean(axis=1) for j in range(len(names))], 1)
    parts = list(studies[BODY_PART])
    trials_test = pd.read_csv(exp / TRIALS_TEST_DIR / TRIALS_TEST_METRICS, dtype={"trial_id": str}).set_index(
        "trial_id"
    )
    per_config = {}
    for j, name in enumerate(names):
        members = [kappa_auc(studies, fold_probs[:, j * folds + k]) for k in range(folds)]
        per_config[name] = {
            "search_trial_test": {
                "kappa": trials_test.loc[name, "test_kappa"],
                "auc": trials_test.loc[name, "test_auc"],
            },
            "fold_models_test": members,
            "fold_models_mean_test": {m: statistics.fmean(x[m] for x in members) for m in ("kappa", "auc")},
            "fold_average_test_at_0.5": kappa_auc(studies, config_probs[:, j]),
            "oof_at_0.5": kappa_auc(oof.studies, oof.probs[:, j]),
            "fold_average_test_oof_thresholds": kappa_auc(
                studies, config_probs[:, j], tuned_thresholds(oof.studies, oof.probs[:, j])
            ),
        }
    weights = cv_weights(copy, names, folds)
    oof_probs = combine(oof.probs, list(oof.studies[BODY_PART]), weights)
    test_probs = combine(config_probs, parts, weights)
    per_part = tuned_thresholds(oof.studies, oof_probs)
    overall = tune_threshold(oof.studies[LABEL].to_numpy(dtype=int), oof_probs)
    return {
        "configurations": names,
        "epochs": epoch_rows(exp, refits),
        "per_configuration": per_config,
        "cv_weights": {part: vector.tolist() for part, vector in weights.items()},
        "thresholds": {
            "per_body_part_oof": kappa_auc(studies, test_probs, per_part) | {"thresholds": per_part},
            "global_oof": kappa_auc(studies, test_probs, dict.fromkeys(per_part, overall)) | {"threshold": overall},
            "0.5": kappa_auc(studies, test_probs),
        },
    }


def cv_weights(copy: Path, names: list[str], folds: int) -> dict[str, np.ndarray]:
    """The cv ensemble's weights per configuration (its fold models' weights summed), per body part."""
    spec = json.loads((copy / ENSEMBLE_DIR / CV_ENSEMBLE / ENSEMBLE_FILE).read_text())
    columns = [names.index(name) for name in spec["configurations"]]
    weights = {}
    for part, vector in spec["weights"].items():
        full = np.zeros(len(names))
        full[columns] = np.asarray(vector).reshape(len(columns), folds).sum(axis=1)
        weights[part] = full
    return weights


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench/refit-hard"))
    parser.add_argument("--variant", default="top2-folds3")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    result = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        exp = out / f"seed-{seed}" / "runs" / "demo"
        result[str(seed)] = diagnose_seed(exp, out / f"seed-{seed}" / "refit" / args.variant / "demo")
        print(json.dumps({seed: result[str(seed)]}, indent=1, default=float), flush=True)
    write_json(out / f"diagnosis-{args.variant}.json", result)


if __name__ == "__main__":
    main()
