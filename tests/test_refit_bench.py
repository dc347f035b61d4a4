"""The hard refit benchmark's default-predictor column, calibration summary and calibration maps (bench/)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit

from bench.refit_calibration import configuration_weights, fit_platt, fitted_maps, platt_or_global
from bench.refit_hard import DEFAULT, hard_summary, hard_table, strategy_dirs
from muratune.constants import BODY_PART, LABEL
from muratune.ensemble.calibration import calibrate, fit_calibration


def _figures(kappa: float, ece: float, uncalibrated: float | None = None) -> dict:
    figures = {"kappa": kappa, "auc": 0.8, "ece": ece, "brier": 0.2, "ece_by_chance": 0.05}
    return figures | ({"ece_uncalibrated": uncalibrated, "brier_uncalibrated": 0.25} if uncalibrated else {})


def test_the_default_column_is_the_strategy_refit_chose(tmp_path: Path) -> None:
    exp, copy = tmp_path / "seed-0" / "runs" / "demo", tmp_path / "seed-0" / "refit" / "v" / "demo"
    for folder in (exp / "ensemble" / "best-single", copy / "ensemble" / "cv", copy / "ensemble" / "cv-full"):
        folder.mkdir(parents=True)
        (folder / "test_metrics.json").write_text("{}")
    assert DEFAULT not in strategy_dirs(exp, copy)  # no default.json: refit chose nothing
    choice = {"predictor": "cv-full", "path": "ensemble/cv-full", "rule": "auto", "reason": "not clearly worse"}
    (copy / "ensemble" / "default.json").write_text(json.dumps(choice))  # as `muratune refit` records it
    dirs = strategy_dirs(exp, copy)
    assert dirs[DEFAULT] == copy / "ensemble" / "cv-full"
    assert set(dirs) == {"best-single", "cv", "cv-full", DEFAULT}  # greedy was not built here


def test_the_summary_gives_calibrated_over_uncalibrated_ece_and_names_the_default() -> None:
    rows = [
        {"seed": s, "best-single": _figures(0.5, 0.12), "cv": _figures(0.55, e, u), "default": _figures(0.55, e, u)}
        | {"cv-full": _figures(0.56, 0.05, 0.1)}
        for s, e, u in ((0, 0.04, 0.10), (1, 0.06, 0.10))
    ]
    for row in rows:
        row["cv"]["oof_kappa"] = 0.6
        row[DEFAULT]["predictor"] = "cv"
    summary = hard_summary(rows, {}, {"variant": "v"})
    assert summary["mean"]["cv"]["ece"] == pytest.approx(0.05)
    assert summary["ece_over_uncalibrated"]["cv"] == pytest.approx(0.5)
    assert "best-single" not in summary["ece_over_uncalibrated"]  # never calibrated: no ratio
    printed = hard_table(summary)
    assert "default predictor per seed (muratune refit's choice): 0: cv, 1: cv" in printed
    assert "cv  0.050 (0.100; 0.050)   calibrated / uncalibrated 0.50" in printed


def test_platt_scaling_recovers_a_planted_slope_and_bias() -> None:
    rng = np.random.default_rng(0)
    raw = rng.uniform(0.02, 0.98, 20000)
    labels = (rng.random(raw.size) < expit(2.0 * logit(raw) - 0.5)).astype(float)
    slope, bias = fit_platt(labels, raw)
    assert slope == pytest.approx(2.0, abs=0.1)
    assert bias == pytest.approx(-0.5, abs=0.1)


def test_the_shipped_map_is_muratunes_own_calibration() -> None:
    rng = np.random.default_rng(1)
    parts = np.repeat(["XR_HAND", "XR_WRIST"], 200)
    probs = rng.uniform(0.05, 0.95, parts.size)
    studies = pd.DataFrame({BODY_PART: parts, LABEL: (rng.random(parts.size) < probs**2).astype(int)})
    maps = fitted_maps(studies, probs)
    expected = calibrate(probs, list(parts), fit_calibration(studies, probs, "out-of-fold"))
    np.testing.assert_allclose(maps["temperature per body part (shipped)"](probs, parts), expected)
    np.testing.assert_array_equal(maps["none"](probs, parts), probs)
    assert set(maps) == {
        "none",
        "temperature per body part (shipped)",
        "one temperature",
        "Platt, one",
        "Platt per body part",
    }


def test_configuration_weights_sum_each_configurations_fold_models() -> None:
    # the three fields of a cv ensemble.json it reads: folds, the used configurations in order, member weights
    spec = SimpleNamespace(folds=2, configurations={"b": 1.0, "a": 3.0}, weights={"all": [0.1, 0.1, 0.3, 0.5]})
    weights = configuration_weights(spec, ["a", "b", "c"])
    np.testing.assert_allclose(weights["all"], [0.8, 0.2, 0.0])  # b's folds first (configuration-major), c unused


def test_platt_per_body_part_has_the_shipped_maps_fallbacks() -> None:
    rng = np.random.default_rng(2)
    overall = (1.0, 0.0)
    raw = rng.uniform(0.05, 0.95, 400)
    labels = (rng.random(raw.size) < expit(2.0 * logit(raw))).astype(float)
    slope, _ = platt_or_global(labels, raw, overall)
    assert slope == pytest.approx(2.0, abs=0.5)  # enough studies of both classes: its own fit
    assert platt_or_global(labels[:10], raw[:10], overall) == overall  # too few studies
    assert platt_or_global(np.zeros(50), raw[:50], overall) == overall  # one class
    separable = np.tile([0.0, 1.0], 30)
    assert platt_or_global(separable, np.where(separable == 1, 0.9, 0.1), overall) == overall  # runaway slope
