"""Temperature scaling of the ensemble's study probability: fitting, labels kept, ensemble.json, predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit
from sklearn.metrics import brier_score_loss

from muratune.constants import BODY_PART, LABEL, PROB, STUDY_PATH
from muratune.ensemble.calibration import (
    MIN_STUDIES,
    at_lower_bound,
    calibrate,
    calibrated_thresholds,
    fit_calibration,
    fit_temperature,
    scale,
)
from muratune.ensemble.predictor import StudyPredictor, aggregate
from muratune.ensemble.scoring import tuned_thresholds
from muratune.errors import UserError
from muratune.layout import ENSEMBLE_FILE
from muratune.metrics import brier_score, chance_ece, expected_calibration_error, study_metrics
from muratune.schemas import CalibrationSpec, read_ensemble_spec
from tests.helpers.cli import run
from tests.helpers.ensemble import make_ensemble

PARTS = ("XR_WRIST", "XR_HAND", "XR_ELBOW")


def _overconfident(n: int, temperature: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from sigmoid(z) and probabilities sigmoid(z * temperature): calibrated by ``temperature``."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, n)
    labels = (rng.random(n) < expit(logits)).astype(int)
    return labels, expit(logits * temperature)


def _studies(seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Held-out studies of three body parts, each miscalibrated differently, and a part with too few studies."""
    frames, probs = [], []
    for k, (part, temperature, n) in enumerate([("XR_WRIST", 2.5, 600), ("XR_HAND", 0.6, 600), ("XR_ELBOW", 1.5, 8)]):
        labels, p = _overconfident(n, temperature, seed + k)
        frames.append(pd.DataFrame({STUDY_PATH: [f"{part}/s{i}/" for i in range(n)], BODY_PART: part, LABEL: labels}))
        probs.append(p)
    return pd.concat(frames, ignore_index=True), np.concatenate(probs)


@pytest.mark.parametrize("planted", [0.5, 1.0, 2.0, 3.0])
def test_temperature_fitting_recovers_a_planted_temperature(planted: float):
    labels, probs = _overconfident(20_000, planted, seed=1)
    assert fit_temperature(labels, probs) == pytest.approx(planted, rel=0.05)


def test_each_body_part_gets_its_temperature_and_a_small_one_falls_back_to_the_global():
    studies, probs = _studies()
    calibration = fit_calibration(studies, probs, "internal-val")
    assert calibration.temperature["XR_WRIST"] == pytest.approx(2.5, rel=0.2)
    assert calibration.temperature["XR_HAND"] == pytest.approx(0.6, rel=0.2)
    assert "XR_ELBOW" not in calibration.temperature  # 8 < MIN_STUDIES studies
    assert (studies[BODY_PART] == "XR_ELBOW").sum() < MIN_STUDIES
    parts = list(studies[BODY_PART])
    elbow = studies[BODY_PART].to_numpy() == "XR_ELBOW"
    np.testing.assert_allclose(
        calibrate(probs, parts, calibration)[elbow], scale(probs[elbow], calibration.temperature["all"])
    )
    calibrated = calibrate(probs, parts, calibration)
    labels = studies[LABEL].to_numpy()
    assert expected_calibration_error(labels, calibrated) < expected_calibration_error(labels, probs) / 2
    assert brier_score(labels, calibrated) < brier_score(labels, probs)


@pytest.mark.parametrize("margin", [0.6, 0.9, 0.99])
def test_a_body_part_whose_out_of_fold_predictions_separate_the_classes_uses_the_global_temperature(margin: float):
    studies, probs = _studies()
    wrist = (studies[BODY_PART] == "XR_WRIST").to_numpy()
    labels = studies[LABEL].to_numpy()
    # wrist's held-out predictions separate the classes at 0.5, timidly or boldly: the log loss keeps falling as T
    # shrinks (every probability moves towards its label), so the fit runs into the lower bound
    probs = probs.copy()
    probs[wrist] = np.where(labels[wrist] == 1, margin, 1 - margin)
    assert at_lower_bound(fit_temperature(labels[wrist], probs[wrist]))
    calibration = fit_calibration(studies, probs, "out-of-fold")
    assert "XR_WRIST" not in calibration.temperature  # the global temperature applies
    assert calibration.temperature["XR_HAND"] == pytest.approx(0.6, rel=0.2)
    assert not at_lower_bound(calibration.temperature["all"])
    np.testing.assert_allclose(
        calibrate(probs[wrist], ["XR_WRIST"] * int(wrist.sum()), calibration),
        scale(probs[wrist], calibration.temperature["all"]),
    )


def test_separable_studies_everywhere_keep_the_identity_and_uninformative_ones_are_flattened():
    labels = np.tile([0, 1], 40)
    separable = pd.DataFrame({BODY_PART: "XR_HAND", LABEL: labels})
    calibration = fit_calibration(separable, np.where(labels == 1, 0.8, 0.2), "out-of-fold")
    assert calibration.temperature == {"all": 1.0}  # no estimate anywhere: the identity, not e^-3
    backwards = np.where(labels == 1, 0.3, 0.7)  # worse than a coin: the fit flattens them towards 0.5, kept
    assert fit_temperature(labels, backwards) == pytest.approx(np.exp(3.0), rel=1e-2)
    assert fit_calibration(separable, backwards, "out-of-fold").temperature["XR_HAND"] == pytest.approx(
        np.exp(3.0), rel=1e-2
    )


def test_one_class_or_nan_studies_keep_the_identity():
    studies = pd.DataFrame({STUDY_PATH: [f"s{i}/" for i in range(40)], BODY_PART: "XR_HAND", LABEL: 1})
    probs = np.linspace(0.05, 0.95, 40)
    probs[3] = np.nan
    calibration = fit_calibration(studies, probs, "out-of-fold")
    assert calibration.temperature == {"all": 1.0}
    out = calibrate(probs, list(studies[BODY_PART]), calibration)
    np.testing.assert_allclose(out, probs)  # NaN stays NaN
    np.testing.assert_array_equal(calibrate(probs, ["XR_HAND"] * 40, None), probs)


@pytest.mark.parametrize("seed", range(4))
def test_calibration_keeps_every_label_kappa_and_auc(seed: int):
    studies, probs = _studies(seed)
    thresholds = tuned_thresholds(studies, probs)
    calibration = fit_calibration(studies, probs, "internal-val")
    mapped = calibrated_thresholds(thresholds, calibration)
    parts = list(studies[BODY_PART])
    calibrated = calibrate(probs, parts, calibration)
    cut = np.array([thresholds.get(p, 0.5) for p in parts])
    mapped_cut = np.array([mapped.get(p, 0.5) for p in parts])
    np.testing.assert_array_equal(probs >= cut, calibrated >= mapped_cut)
    before = study_metrics(studies.assign(prob=probs), "val", thresholds)
    after = study_metrics(studies.assign(prob=calibrated), "val", mapped)
    kept = [key for key in before if "kappa" in key or "accuracy" in key or key.startswith("val_auc/")]
    assert len(kept) == 3 * 2 + 3 + 2  # overall and per-part kappa and accuracy, per-part AUC
    for key in kept:  # overall AUC pools body parts, whose temperatures differ: it may move
        assert after[key] == pytest.approx(before[key], abs=1e-12), key


def test_the_predictor_calibrates_study_probabilities_and_labels_follow_the_mapped_thresholds():
    images = pd.DataFrame(
        {STUDY_PATH: ["a/", "a/", "b/", "c/"], BODY_PART: ["XR_HAND", "XR_HAND", "XR_WRIST", "XR_SHOULDER"]}
    )
    views = np.array([0.9, 0.7, 0.2, 0.6])
    calibration = CalibrationSpec(fitted_on="internal-val", temperature={"all": 2.0, "XR_HAND": 0.5})
    thresholds = calibrated_thresholds({"XR_HAND": 0.85, "XR_WRIST": 0.3}, calibration)
    studies = aggregate(images, views, thresholds, calibration)
    np.testing.assert_allclose(
        studies[PROB], [scale(np.array([0.8]), 0.5)[0], scale(np.array([0.2]), 2.0)[0], scale(np.array([0.6]), 2.0)[0]]
    )
    assert studies[LABEL].tolist() == [0, 0, 1]  # 0.8 < 0.85, 0.2 < 0.3, 0.6 >= 0.5 (0.5 is its own image)
    assert thresholds["XR_WRIST"] == pytest.approx(scale(np.array([0.3]), 2.0)[0])


def test_the_cam_page_calibrates_its_study_probability_against_the_calibrated_threshold():
    from muratune.cam.export import study_rows

    records = [
        {STUDY_PATH: "a/", BODY_PART: "XR_HAND", "probability": 0.7},
        {STUDY_PATH: "a/", BODY_PART: "XR_HAND", "probability": 0.9},
        {STUDY_PATH: "b/", BODY_PART: "XR_WRIST", "probability": 0.35},
    ]
    calibration = CalibrationSpec(fitted_on="internal-val", temperature={"all": 2.0, "XR_HAND": 0.5})
    thresholds = calibrated_thresholds({"XR_HAND": 0.85, "XR_WRIST": 0.3}, calibration)
    rows = study_rows(records, thresholds, calibration)
    assert [row["probability"] for row in rows] == pytest.approx(
        [scale(np.array([0.8]), 0.5)[0], scale(np.array([0.35]), 2.0)[0]]
    )
    assert [row["label"] for row in rows] == [0, 1]  # as without calibration: 0.8 < 0.85, 0.35 >= 0.3


def test_ece_and_brier_follow_their_definitions():
    labels = np.array([0, 0, 1, 1, 1])
    probs = np.array([0.05, 0.15, 0.15, 0.95, 1.0])
    # bins [0, .1): {0.05 | 0} gap 0.05; [.1, .2): {0.15, 0.15 | 0, 1} gap |0.3 - 1| = 0.7; [.9, 1]: gap |1.95 - 2|
    assert expected_calibration_error(labels, probs) == pytest.approx((0.05 + 0.7 + 0.05) / 5)
    assert brier_score(labels, probs) == pytest.approx(brier_score_loss(labels, probs))
    assert np.isnan(expected_calibration_error(np.array([]), np.array([])))


def test_chance_ece_is_what_a_calibrated_model_shows_and_shrinks_with_more_studies():
    rng = np.random.default_rng(3)
    probs = rng.uniform(0.05, 0.95, 300)
    floor = chance_ece(probs, draws=400)
    # labels drawn from the probabilities themselves: a perfectly calibrated model, whose ECE is the floor on average
    drawn = [expected_calibration_error(rng.random(300) < probs, probs) for _ in range(400)]
    assert floor == pytest.approx(np.mean(drawn), rel=0.1)
    assert 0.03 < floor < 0.08  # a few hundred studies: about 0.05
    assert chance_ece(np.tile(probs, 10), draws=100) < floor / 2  # 10x the studies: about 1/sqrt(10)
    assert chance_ece(probs, draws=50, seed=1) == chance_ece(probs, draws=50, seed=1)
    assert np.isnan(chance_ece(np.array([np.nan])))


# ------------------------------------------------------------------------------------------------ ensemble.json
def _calibrated_ensemble(folder: Path, calibration: dict, thresholds: dict | None = None) -> Path:
    make_ensemble(folder)
    spec = json.loads((folder / ENSEMBLE_FILE).read_text())
    spec["calibration"] = calibration
    spec["thresholds"] = thresholds or {}
    (folder / ENSEMBLE_FILE).write_text(json.dumps(spec))
    return folder


def test_ensemble_json_round_trips_the_calibration_and_an_old_file_loads_as_the_identity(tmp_path: Path):
    calibration = {"method": "temperature", "fitted_on": "out-of-fold", "temperature": {"all": 1.7, "XR_HAND": 0.9}}
    folder = _calibrated_ensemble(tmp_path / "new", calibration)
    spec = read_ensemble_spec(folder / ENSEMBLE_FILE)
    assert spec.calibration == CalibrationSpec.model_validate(calibration)
    assert spec.to_json()["calibration"] == calibration
    assert StudyPredictor.load(folder, device="cpu").calibration == spec.calibration
    old = make_ensemble(tmp_path / "old")
    assert "calibration" not in json.loads((old / ENSEMBLE_FILE).read_text())
    assert read_ensemble_spec(old / ENSEMBLE_FILE).calibration is None
    assert StudyPredictor.load(old, device="cpu").calibration is None


@pytest.mark.parametrize(
    ("temperature", "message"),
    [({"XR_HAND": 1.0}, "'all'"), ({"all": 0.0}, "greater than 0"), ({"all": 1.0, "XR_KNEE": 1.0}, "XR_KNEE")],
)
def test_a_bad_calibration_is_one_line_naming_the_field(tmp_path: Path, temperature: dict, message: str):
    folder = _calibrated_ensemble(
        tmp_path / "bad", {"method": "temperature", "fitted_on": "internal-val", "temperature": temperature}
    )
    with pytest.raises(UserError, match="calibration.temperature") as info:
        read_ensemble_spec(folder / ENSEMBLE_FILE)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_predict_writes_calibrated_probabilities_equal_to_the_predictor(synthetic_root: Path, tmp_path: Path, capsys):
    dataset = synthetic_root / "MURA-v1.1"
    lines = (dataset / "valid_image_paths.csv").read_text().split()[:12]
    listing = tmp_path / "images.csv"
    listing.write_text("\n".join(lines) + "\n")
    calibration = {"method": "temperature", "fitted_on": "internal-val", "temperature": {"all": 3.0, "XR_WRIST": 0.4}}
    folder = _calibrated_ensemble(tmp_path / "calibrated", calibration, {"XR_WRIST": 0.45})
    out = tmp_path / "out.csv"
    code, _, err = run(
        ["predict", str(folder), str(listing), str(out), "--probabilities", "--root", str(synthetic_root)], capsys
    )
    assert code == 0, err
    written = pd.read_csv(out, header=None, names=[STUDY_PATH, LABEL, PROB])
    predictor = StudyPredictor.load(folder, device="cpu")
    expected = predictor.predict_frame(pd.DataFrame({"image_path": lines}), root=synthetic_root)
    assert written[STUDY_PATH].tolist() == expected[STUDY_PATH].tolist()
    np.testing.assert_allclose(written[PROB], expected[PROB], atol=1e-6)
    assert written[LABEL].tolist() == expected[LABEL].astype(int).tolist()
    predictor.calibration = None  # the same members without calibration: the raw study means
    raw = predictor.predict_frame(pd.DataFrame({"image_path": lines}), root=synthetic_root)
    parts = list(raw[BODY_PART])
    spec = CalibrationSpec.model_validate(calibration)
    np.testing.assert_allclose(written[PROB], calibrate(raw[PROB].to_numpy(), parts, spec), atol=1e-6)
    assert np.abs(written[PROB] - raw[PROB]).max() > 1e-4  # random members predict near 0.5: small but real
