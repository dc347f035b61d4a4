"""Calibration maps fitted on a hard refit's out-of-fold predictions, scored on its test split and on the holdout.

For every seed of a hard ``bench.refit_cv`` run (and its ``bench.refit_holdout`` scores, where present), the cv
ensemble's out-of-fold study probabilities are rebuilt from its fold models' saved predictions (with TTA where the
ensemble uses it), each map below is fitted on them, and applied to the uncalibrated test probabilities of cv and
cv-full. Inference only, no training. The shipped map is muratune's own (`fit_calibration`); the others are the
alternatives issue 30 names. ECE is muratune's (10 equal-width bins); "by chance" is the ECE a perfectly calibrated
model with the same probabilities shows on that many studies (`chance_ece`).

    python -m bench.refit_calibration --out runs/bench/refit-hard --variant top2-folds3 --seeds 0,1,2,3,4
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit

from muratune.constants import BODY_PART, LABEL, PROB_UNCALIBRATED
from muratune.data.index import load_index
from muratune.ensemble.calibration import (
    LOG_T_BOUNDS,
    MIN_STUDIES,
    calibrate,
    clipped_logits,
    fit_calibration,
    fit_temperature,
    logit_log_loss,
    scale,
)
from muratune.ensemble.select import combine
from muratune.experiment_folder import load_resolved_config
from muratune.fileio import write_json
from muratune.layout import ENSEMBLE_DIR, ENSEMBLE_FILE, REFIT_DIR, REFIT_PLAN, REFIT_SUMMARY, TEST_STUDIES
from muratune.metrics import brier_score, chance_ece, expected_calibration_error, log_loss
from muratune.refit.ensemble import oof_with_tta
from muratune.refit.oof import assemble_oof
from muratune.refit.plan import RefitPlan
from muratune.schemas import read_ensemble_spec

Map = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (test probabilities, their body parts) -> calibrated
STRATEGIES = ("cv", "cv-full")
SHIPPED = "temperature per body part (shipped)"  # muratune's own map


def oof_probabilities(exp: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """The cv ensemble's uncalibrated out-of-fold study probabilities, as `muratune refit` fitted its calibration."""
    config = load_resolved_config(exp)
    plan = RefitPlan.read(exp / REFIT_DIR / REFIT_PLAN)
    summary = pd.read_csv(exp / REFIT_DIR / REFIT_SUMMARY, dtype={"trial_id": str, "configuration": str})
    spec = read_ensemble_spec(exp / ENSEMBLE_DIR / "cv" / ENSEMBLE_FILE)
    names = [c.trial_id for c in plan.configurations]
    with tempfile.TemporaryDirectory() as scratch:  # assemble_oof writes oof_images.parquet: not into the refit
        oof = assemble_oof(Path(scratch), config, names, plan.folds, plan.split_seed, summary)
    if spec.tta:
        oof = oof_with_tta(oof, summary, plan, load_index(config.data.root), config, 64, lambda _: None)  # type: ignore[arg-type]
    studies = oof.studies()
    probs = combine(studies.probs, list(studies.studies[BODY_PART]), configuration_weights(spec, names))
    refitted = fit_calibration(studies.studies, probs, "out-of-fold").temperature
    shipped = spec.calibration.temperature if spec.calibration is not None else refitted
    if set(refitted) != set(shipped) or not all(np.isclose(refitted[k], t, rtol=1e-4) for k, t in shipped.items()):
        raise SystemExit(
            f"{exp}: the rebuilt out-of-fold predictions do not reproduce the cv ensemble's calibration "
            f"(rebuilt {refitted}, shipped {shipped}); rebuild it with this muratune"
        )
    return studies.studies, probs


def configuration_weights(spec, names: list[str]) -> dict[str, np.ndarray]:
    """Per body part, each configuration's weight: the sum of its fold models' weights (configuration-major)."""
    used = list(spec.configurations)
    weights = {}
    for part, vector in spec.weights.items():
        per_configuration = np.zeros(len(names))
        for i, name in enumerate(used):
            per_configuration[names.index(name)] = sum(vector[i * spec.folds : (i + 1) * spec.folds])
        weights[part] = per_configuration
    return weights


def fit_platt(labels: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """Platt scaling on the logit: slope and bias minimising the log loss (unclipped, as the temperature's fit)."""
    z = clipped_logits(probs)
    result = minimize(lambda w: logit_log_loss(labels, w[0] * z + w[1]), [1.0, 0.0], method="L-BFGS-B")
    return float(result.x[0]), float(result.x[1])


def separable(labels: np.ndarray, probs: np.ndarray) -> bool:
    """Whether one threshold on ``probs`` puts every study on its label's side (either way round)."""
    positive, negative = probs[labels == 1], probs[labels == 0]
    return bool(positive.min() > negative.max() or negative.min() > positive.max())


def platt_or_global(labels: np.ndarray, probs: np.ndarray, overall: tuple[float, float]) -> tuple[float, float]:
    """A body part's Platt scaling, under the shipped map's rules: too few studies, one class, predictions that
    separate the classes (no maximum-likelihood fit exists; the optimiser stops wherever the gradient vanishes), or
    a slope past the temperature's bound (1 / e^-3) fall back to the one fitted on all studies."""
    if len(labels) < MIN_STUDIES or len(set(labels)) < 2 or separable(labels, probs):
        return overall
    slope, bias = fit_platt(labels, probs)
    return overall if abs(slope) >= 1 / np.exp(LOG_T_BOUNDS[0]) else (slope, bias)


def fitted_maps(studies: pd.DataFrame, probs: np.ndarray) -> dict[str, Map]:
    """Each candidate map, fitted on the out-of-fold studies."""
    labels, parts = studies[LABEL].to_numpy(dtype=float), studies[BODY_PART].to_numpy()
    shipped = fit_calibration(studies, probs, "out-of-fold")
    temperature = fit_temperature(labels, probs)
    slope, bias = fit_platt(labels, probs)
    per_part = {p: platt_or_global(labels[parts == p], probs[parts == p], (slope, bias)) for p in set(parts)}

    def platt_per_part(p: np.ndarray, part: np.ndarray) -> np.ndarray:
        coefficients = np.array([per_part.get(x, (slope, bias)) for x in part])
        return expit(coefficients[:, 0] * clipped_logits(p) + coefficients[:, 1])

    return {
        "none": lambda p, part: p,
        SHIPPED: lambda p, part: calibrate(p, list(part), shipped),
        "one temperature": lambda p, part: scale(p, temperature),
        "Platt, one": lambda p, part: expit(slope * clipped_logits(p) + bias),
        "Platt per body part": platt_per_part,
    }


def scores(folder: Path, maps: dict[str, Map]) -> dict[str, dict[str, float]]:
    """ECE, Brier and log loss of each map on one ensemble's test studies (uncalibrated probabilities mapped)."""
    test = pd.read_parquet(folder / TEST_STUDIES)
    test = test[test[PROB_UNCALIBRATED].notna()]
    labels, parts = test[LABEL].to_numpy(dtype=float), test[BODY_PART].to_numpy()
    out = {}
    for name, fitted in maps.items():
        probs = fitted(test[PROB_UNCALIBRATED].to_numpy(dtype=float), parts)
        out[name] = {
            "ece": expected_calibration_error(labels, probs),
            "brier": brier_score(labels, probs),
            "log_loss": log_loss(labels, probs),
            "ece_by_chance": chance_ece(probs),
        }
    return out


def test_sets(out: Path, variant: str, seed: int) -> dict[str, Path]:
    """Where each test set's ensemble folders are: the benchmark's test split, and the holdout where it was scored."""
    sets = {"test split": out / f"seed-{seed}" / "refit" / variant / "demo" / ENSEMBLE_DIR}
    holdout = out / "holdout-scores" / variant / f"seed-{seed}"
    if holdout.is_dir():
        sets["holdout"] = holdout
    return sets


def table(rows: list[dict]) -> pd.DataFrame:
    """Mean over seeds of each (test set, strategy, map)."""
    frame = pd.DataFrame(rows)
    return frame.groupby(["test_set", "strategy", "map"], sort=False)[
        ["ece", "ece_by_chance", "brier", "log_loss"]
    ].mean()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench/refit-hard"), help="the hard benchmark's --out")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--variant", default="top2-folds3")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        exp = out / f"seed-{seed}" / "refit" / args.variant / "demo"
        maps = fitted_maps(*oof_probabilities(exp))
        for test_set, folders in test_sets(out, args.variant, seed).items():
            for strategy in STRATEGIES:
                if (folders / strategy / TEST_STUDIES).is_file():
                    for name, figures in scores(folders / strategy, maps).items():
                        rows.append({"seed": seed, "test_set": test_set, "strategy": strategy, "map": name} | figures)
    means = table(rows)
    with pd.option_context("display.width", 160, "display.max_rows", 100, "display.max_columns", 10):
        print(means.round(4))
    ece = means["ece"]
    ratios = {
        f"{test_set} / {strategy}": float(ece[(test_set, strategy, SHIPPED)] / ece[(test_set, strategy, "none")])
        for test_set, strategy, _ in means.index
    }
    print("shipped ECE over uncalibrated ECE (means over seeds):", {k: round(v, 2) for k, v in sorted(ratios.items())})
    write_json(out / f"calibration-{args.variant}.json", {"rows": rows, "shipped_over_uncalibrated": ratios})


if __name__ == "__main__":
    main()
