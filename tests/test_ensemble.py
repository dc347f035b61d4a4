"""Ensemble selection (pure), the saved StudyPredictor artifact, and its refusal of damaged or tampered folders."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from muratune.body_parts import body_part_in_path
from muratune.constants import BODY_PART, IMAGE_PATH, LABEL, SPLIT, SPLIT_VALID, STUDY_PATH
from muratune.ensemble.predictor import StudyPredictor, study_path_of
from muratune.ensemble.select import (
    BestSingle,
    Greedy,
    GreedyPerBodyPart,
    TopKMean,
    ValPredictions,
    align_image_predictions,
    combine,
    score,
)
from muratune.errors import UserError
from muratune.layout import ENSEMBLE_FILE
from muratune.metrics import log_loss
from muratune.schemas import GLOBAL_WEIGHTS, read_ensemble_spec
from tests.helpers.ensemble import SEARCH_KEYS


# ------------------------------------------------------------------------------------------------ pure selection
def _val(labels: list[int], columns: dict[str, list[float]], parts: list[str] | None = None) -> ValPredictions:
    studies = pd.DataFrame(
        {
            STUDY_PATH: [f"s{i}/" for i in range(len(labels))],
            BODY_PART: parts or ["XR_WRIST"] * len(labels),
            LABEL: labels,
        }
    )
    return ValPredictions(studies, np.array(list(columns.values()), dtype=float).T, list(columns))


def _complementary() -> ValPredictions:
    """A and B are each wrong (barely) on two different studies; their mean is always right. C and D are worse."""
    labels = [1, 1, 0, 0, 1, 1, 0, 0]
    a = [0.45, 0.9, 0.55, 0.1, 0.9, 0.9, 0.1, 0.1]  # wrong on studies 0 and 2
    b = [0.9, 0.9, 0.1, 0.1, 0.45, 0.9, 0.55, 0.1]  # wrong on studies 4 and 6
    c = [0.6, 0.4, 0.6, 0.4, 0.6, 0.4, 0.4, 0.4]
    d = [0.5] * 8
    return _val(labels, {"A": a, "B": b, "C": c, "D": d})


def test_selection_scores_with_the_one_kappa():
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(0)
    for _ in range(20):
        labels, probs = rng.integers(0, 2, 30), rng.random(30)
        kappa, neg_loss = score(labels, probs)
        assert kappa == pytest.approx(cohen_kappa_score(labels, (probs >= 0.5).astype(int)))
        assert neg_loss == pytest.approx(-log_loss(labels, probs))
    assert score(np.ones(5, int), np.ones(5))[0] == 0.0  # undefined kappa ranks as 0


def test_greedy_picks_the_complementary_pair():
    preds = _complementary()
    weights = Greedy(k=5).select(preds)[GLOBAL_WEIGHTS]
    assert set(np.flatnonzero(weights)) == {0, 1}
    assert score(preds.labels, combine(preds.probs, ["XR_WRIST"] * 8, {GLOBAL_WEIGHTS: weights}))[0] == 1.0
    single = BestSingle().select(preds)[GLOBAL_WEIGHTS]
    assert np.flatnonzero(single)[0] in (0, 1)
    assert score(preds.labels, preds.probs[:, np.flatnonzero(single)[0]])[0] < 1.0


def test_top_k_mean_takes_the_k_best_with_equal_weights():
    weights = TopKMean(k=2).select(_complementary())[GLOBAL_WEIGHTS]
    np.testing.assert_array_equal(weights, [1, 1, 0, 0])


def test_greedy_stops_at_the_best_prefix():
    # With one perfect candidate, adding anything else can only lower the score: the best prefix is that one alone.
    preds = _val([1, 0, 1, 0], {"bad": [0.4, 0.6, 0.4, 0.6], "perfect": [0.9, 0.1, 0.9, 0.1]})
    np.testing.assert_array_equal(Greedy(k=4).select(preds)[GLOBAL_WEIGHTS], [0, 1])


def test_per_body_part_uses_different_members_where_they_differ():
    good, bad = [0.9, 0.1, 0.9, 0.1], [0.1, 0.9, 0.1, 0.9]
    preds = _val(
        [1, 0, 1, 0] * 2,
        {"elbow_expert": good + bad, "wrist_expert": bad + good},
        ["XR_ELBOW"] * 4 + ["XR_WRIST"] * 4,
    )
    weights = GreedyPerBodyPart(k=3).select(preds)
    np.testing.assert_array_equal(np.flatnonzero(weights["XR_ELBOW"]), [0])
    np.testing.assert_array_equal(np.flatnonzero(weights["XR_WRIST"]), [1])
    probs = combine(preds.probs, list(preds.studies[BODY_PART]), weights)
    assert score(preds.labels, probs)[0] == 1.0
    assert score(preds.labels, combine(preds.probs, [None] * 8, Greedy(k=3).select(preds)))[0] < 1.0


def test_misaligned_validation_predictions_are_refused():
    frame = pd.DataFrame(
        {IMAGE_PATH: ["a.png", "b.png"], STUDY_PATH: ["s/", "s/"], BODY_PART: "XR_HAND", LABEL: 1, "prob": [0.2, 0.4]}
    )
    other = frame.assign(**{IMAGE_PATH: ["a.png", "c.png"]})
    with pytest.raises(UserError, match="data.split_seed"):
        align_image_predictions([frame, other], ["trial_a", "trial_b"])
    images, probs = align_image_predictions([frame, frame.iloc[::-1]], ["trial_a", "trial_b"])
    np.testing.assert_array_equal(probs[:, 0], probs[:, 1])


def test_paths_give_body_part_and_study():
    path = "MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive/image1.png"
    assert body_part_in_path(path) == "XR_WRIST"
    assert study_path_of(path) == "MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive/"
    assert body_part_in_path("scans/img.png") is None


# ------------------------------------------------------------------------------------------------ artifacts
@pytest.fixture(scope="module")
def ensembled(tiny_experiment: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny experiment with every strategy built (size 3, thresholds tuned per body part)."""
    from muratune.ensemble.build import build_ensembles

    exp = tmp_path_factory.mktemp("ensembled") / "tiny"
    shutil.copytree(tiny_experiment, exp)
    build_ensembles(exp, size=3, tune_thresholds=True, calibrate=True, echo=lambda _: None)
    return exp


def _test_images(root: Path) -> pd.DataFrame:
    from muratune.data.index import load_index

    index = load_index(root)
    return index[index[SPLIT] == SPLIT_VALID].reset_index(drop=True)


def _copy_artifact(ensembled: Path, tmp_path: Path, strategy: str = "greedy") -> Path:
    target = tmp_path / strategy
    shutil.copytree(ensembled / "ensemble" / strategy, target)
    return target


def _edit_spec(folder: Path, edit) -> None:
    spec = json.loads((folder / ENSEMBLE_FILE).read_text())
    edit(spec)
    (folder / ENSEMBLE_FILE).write_text(json.dumps(spec))


@pytest.mark.slow
def test_every_strategy_is_saved_and_scored_on_test(ensembled: Path):
    for strategy in ("best-single", "top-k-mean", "greedy", "greedy-per-body-part"):
        folder = ensembled / "ensemble" / strategy
        spec = json.loads((folder / ENSEMBLE_FILE).read_text())
        assert spec["strategy"] == strategy and spec["members"] and spec["tune_thresholds"]
        assert list(spec) == SEARCH_KEYS  # the keys muratune writes, in file order
        assert read_ensemble_spec(folder / ENSEMBLE_FILE).to_json() == spec  # written through the one schema
        for member in spec["members"]:
            assert (folder / member["path"] / "model.safetensors").is_file()
            assert not Path(member["path"]).is_absolute()
        metrics = json.loads((folder / "test_metrics.json").read_text())
        studies = pd.read_parquet(folder / "test_studies.parquet")
        assert "test_kappa" in metrics and metrics["test_studies"] == len(studies)
        assert spec["calibration"]["fitted_on"] == "internal-val" and "all" in spec["calibration"]["temperature"]
        assert {"test_ece", "test_brier", "test_ece_uncalibrated", "test_brier_uncalibrated"} <= set(metrics)
        assert {"test_ece", "test_brier"} <= set(spec["test_score"]) and {"val_ece", "val_brier"} <= set(
            spec["val_score"]
        )
        for _, part in studies.groupby(BODY_PART):  # a monotone map per body part: its AUC is unchanged
            if part[LABEL].nunique() == 2:
                auc = roc_auc_score(part[LABEL], part["prob"])
                assert auc == pytest.approx(roc_auc_score(part[LABEL], part["prob_uncalibrated"]), abs=1e-12)
        assert studies[STUDY_PATH].is_unique and set(studies[LABEL]) <= {0, 1}
    trials = pd.read_csv(ensembled / "trials_test" / "metrics.csv", dtype={"trial_id": str})
    summary = pd.read_csv(ensembled / "search_summary.csv", dtype={"trial_id": str})
    assert set(trials["trial_id"]) == set(summary.loc[summary["state"] != "FAIL", "trial_id"])


@pytest.mark.slow
def test_artifact_reloads_in_a_fresh_process_with_identical_predictions(ensembled, synthetic_root, tmp_path):
    folder = ensembled / "ensemble" / "greedy-per-body-part"
    images = _test_images(synthetic_root)
    here = StudyPredictor.load(folder, device="cpu").predict_frame(images, root=images.attrs["root"])
    out = tmp_path / "fresh.parquet"
    script = (
        "import sys, pandas as pd\n"
        "from muratune.ensemble.predictor import StudyPredictor\n"
        "from muratune.data.index import load_index\n"
        "index = load_index(sys.argv[2]); images = index[index['split'] == 'valid'].reset_index(drop=True)\n"
        "StudyPredictor.load(sys.argv[1], device='cpu').predict_frame(images, root=index.attrs['root'])"
        ".to_parquet(sys.argv[3])\n"
    )
    subprocess.run([sys.executable, "-c", script, str(folder), str(synthetic_root), str(out)], check=True, timeout=300)
    fresh = pd.read_parquet(out)
    assert fresh[STUDY_PATH].tolist() == here[STUDY_PATH].tolist()
    np.testing.assert_allclose(fresh["prob"], here["prob"], rtol=0, atol=1e-6)
    assert (fresh[LABEL] == here[LABEL]).all()
    saved = pd.read_parquet(folder / "test_studies.parquet").set_index(STUDY_PATH)
    np.testing.assert_allclose(saved.loc[here[STUDY_PATH], "prob"], here["prob"], atol=1e-5)


@pytest.mark.slow
def test_predict_study_infers_body_part(ensembled, synthetic_root):
    images = _test_images(synthetic_root)
    study = images[images[STUDY_PATH] == images[STUDY_PATH].iloc[0]]
    files = [Path(images.attrs["root"]) / p for p in study[IMAGE_PATH]]
    result = StudyPredictor.load(ensembled / "ensemble" / "greedy", device="cpu").predict_study(files)
    assert result["body_part"] == study[BODY_PART].iloc[0]
    assert len(result["view_probs"]) == len(files)
    assert result["label"] == int(result["prob"] >= result["threshold"])


@pytest.mark.slow
def test_building_again_is_refused_without_overwrite(ensembled):
    from muratune.ensemble.build import build_ensembles

    with pytest.raises(UserError, match="--overwrite"):
        build_ensembles(ensembled, strategies=["greedy"], echo=lambda _: None)
    with pytest.raises(UserError, match="unknown"):
        build_ensembles(ensembled, strategies=["magic"], echo=lambda _: None)


@pytest.mark.slow
def test_corrupted_member_weights_are_a_clear_error(ensembled, tmp_path):
    folder = _copy_artifact(ensembled, tmp_path)
    weights = next(folder.glob("members/*/model.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(UserError, match="checksum"):
        StudyPredictor.load(folder)
    _edit_spec(folder, lambda spec: [m.pop("sha256") for m in spec["members"]])
    with pytest.raises(UserError, match="cannot read model weights"):
        StudyPredictor.load(folder)


@pytest.mark.slow
def test_member_path_escaping_the_artifact_is_refused(ensembled, tmp_path):
    folder = _copy_artifact(ensembled, tmp_path)
    _edit_spec(folder, lambda spec: spec["members"][0].update(path="../../x"))
    with pytest.raises(UserError, match="leaves the ensemble folder"):
        StudyPredictor.load(folder)


@pytest.mark.slow
def test_wrong_weight_shape_or_tensor_shape_is_refused(ensembled, tmp_path):
    folder = _copy_artifact(ensembled, tmp_path, "greedy-per-body-part")
    _edit_spec(folder, lambda spec: spec["weights"].update({GLOBAL_WEIGHTS: [1.0] * (len(spec["members"]) + 1)}))
    with pytest.raises(UserError, match=r"weights\.all: \d+ weight\(s\) for \d+ member\(s\)"):
        StudyPredictor.load(folder)
    folder = _copy_artifact(ensembled, tmp_path / "b", "best-single")
    trial_file = next(folder.glob("members/*/trial.json"))
    trial = json.loads(trial_file.read_text())
    trial["backbone"] = "resnet14t"
    trial_file.write_text(json.dumps(trial))
    with pytest.raises(UserError, match="do not fit the model"):
        StudyPredictor.load(folder)
