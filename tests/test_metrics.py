"""Tests for muratune.metrics: agreement with scikit-learn, study aggregation, thresholds."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix, roc_auc_score

from muratune.metrics import (
    aggregate_studies,
    binary_metrics,
    kappa_at_thresholds,
    study_metrics,
    tune_threshold,
)


def sklearn_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, float]:
    preds = (probs >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, preds, labels=[0, 1]).ravel()
    return {
        "kappa": cohen_kappa_score(labels, preds),
        "accuracy": accuracy_score(labels, preds),
        "auc": roc_auc_score(labels, probs),
        "sensitivity": tp / (tp + fn),
        "specificity": tn / (tn + fp),
    }


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_binary_metrics_agree_with_sklearn(seed: int, threshold: float) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=int(rng.integers(20, 300)))
    labels[:2] = [0, 1]
    probs = np.clip(rng.normal(0.35 + 0.3 * labels, 0.25), 0, 1)
    ours = binary_metrics(labels, probs, threshold)
    for name, expected in sklearn_metrics(labels, probs, threshold).items():
        assert ours[name] == pytest.approx(expected, abs=1e-12), name


@settings(max_examples=60, deadline=None)
@given(
    pairs=st.lists(st.tuples(st.integers(0, 1), st.floats(0, 1, allow_nan=False)), min_size=2, max_size=60),
    threshold=st.floats(0.05, 0.95),
)
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
def test_binary_metrics_agree_with_sklearn_on_any_input(pairs: list[tuple[int, float]], threshold: float) -> None:
    labels = np.array([p[0] for p in pairs])
    probs = np.array([p[1] for p in pairs])
    ours = binary_metrics(labels, probs, threshold)
    preds = (probs >= threshold).astype(int)
    assert ours["accuracy"] == pytest.approx(accuracy_score(labels, preds))
    if len(set(labels)) == 2:
        assert ours["auc"] == pytest.approx(roc_auc_score(labels, probs))
    else:
        assert math.isnan(ours["auc"])
    expected_kappa = cohen_kappa_score(labels, preds, labels=[0, 1])
    if math.isnan(expected_kappa):  # labels and predictions constant and equal: undefined, reported as NaN, never 0
        assert math.isnan(ours["kappa"])
    else:
        assert ours["kappa"] == pytest.approx(expected_kappa, abs=1e-12)


@pytest.mark.parametrize(
    ("labels", "probs"),
    [
        ([1, 1, 1], [0.9, 0.2, 0.6]),  # only positives
        ([0, 0, 0, 0], [0.1, 0.7, 0.2, 0.3]),  # only negatives
        ([0, 0], [0.1, 0.2]),  # all correct, one class: sklearn kappa is NaN
        ([1], [0.8]),
        ([], []),
    ],
)
def test_degenerate_inputs_do_not_crash(labels: list[int], probs: list[float]) -> None:
    out = binary_metrics(np.array(labels, dtype=int), np.array(probs, dtype=float))
    assert set(out) == {"kappa", "accuracy", "auc", "sensitivity", "specificity"}
    assert math.isnan(out["auc"])
    if not labels:
        assert all(math.isnan(value) for value in out.values())
    else:
        one_class_all_right = len(set(labels)) == 1 and all(
            (p >= 0.5) == bool(y) for y, p in zip(labels, probs, strict=True)
        )
        assert math.isnan(out["kappa"]) == one_class_all_right  # undefined kappa: NaN, never 0
        assert 0 <= out["accuracy"] <= 1
    if labels and all(label == 1 for label in labels):
        assert math.isnan(out["specificity"])
        assert out["sensitivity"] == pytest.approx(np.mean(np.array(probs) >= 0.5))
    if labels and all(label == 0 for label in labels):
        assert math.isnan(out["sensitivity"])


def hand_made_images() -> pd.DataFrame:
    """Three elbow studies and two wrist studies with 1-3 views each."""
    rows = [
        ("elbow/s1", "XR_ELBOW", 1, 0.9),
        ("elbow/s1", "XR_ELBOW", 1, 0.3),  # mean 0.6 -> abnormal at 0.5
        ("elbow/s2", "XR_ELBOW", 0, 0.2),
        ("elbow/s2", "XR_ELBOW", 0, 0.4),
        ("elbow/s2", "XR_ELBOW", 0, 0.6),  # mean 0.4 -> normal
        ("elbow/s3", "XR_ELBOW", 1, 0.45),  # a single view, missed at 0.5
        ("wrist/s4", "XR_WRIST", 0, 0.7),
        ("wrist/s4", "XR_WRIST", 0, 0.5),  # mean 0.6 -> false positive
        ("wrist/s5", "XR_WRIST", 1, 0.8),
    ]
    frame = pd.DataFrame(rows, columns=["study_path", "body_part", "label", "prob"])
    frame["image_path"] = [f"{s}/image{i}.png" for i, s in enumerate(frame["study_path"])]
    return frame


def test_aggregate_studies_averages_views() -> None:
    studies = aggregate_studies(hand_made_images())
    assert list(studies["study_path"]) == ["elbow/s1", "elbow/s2", "elbow/s3", "wrist/s4", "wrist/s5"]
    assert studies["prob"].tolist() == pytest.approx([0.6, 0.4, 0.45, 0.6, 0.8])
    assert studies["n_views"].tolist() == [2, 3, 1, 2, 1]
    assert studies["label"].tolist() == [1, 0, 1, 0, 1]
    assert studies["body_part"].tolist() == ["XR_ELBOW"] * 3 + ["XR_WRIST"] * 2


def test_study_metrics_overall_and_per_body_part() -> None:
    studies = aggregate_studies(hand_made_images())
    out = study_metrics(studies, prefix="val")
    # Overall: predictions [1, 0, 0, 1, 1] against labels [1, 0, 1, 0, 1].
    labels, preds = [1, 0, 1, 0, 1], [1, 0, 0, 1, 1]
    assert out["val_kappa"] == pytest.approx(cohen_kappa_score(labels, preds))
    assert out["val_accuracy"] == pytest.approx(0.6)
    assert out["val_sensitivity"] == pytest.approx(2 / 3)
    assert out["val_specificity"] == pytest.approx(0.5)
    assert out["val_auc"] == pytest.approx(roc_auc_score(labels, [0.6, 0.4, 0.45, 0.6, 0.8]))
    assert out["val_studies"] == 5
    # Elbow: labels [1, 0, 1], predictions [1, 0, 0].
    assert out["val_kappa/elbow"] == pytest.approx(cohen_kappa_score([1, 0, 1], [1, 0, 0]))
    assert out["val_sensitivity/elbow"] == pytest.approx(0.5)
    assert out["val_specificity/elbow"] == pytest.approx(1.0)
    assert out["val_auc/elbow"] == pytest.approx(1.0)
    # Wrist: labels [0, 1], predictions [1, 1].
    assert out["val_kappa/wrist"] == pytest.approx(0.0)
    assert out["val_accuracy/wrist"] == pytest.approx(0.5)
    assert out["val_auc/wrist"] == pytest.approx(1.0)
    assert not any(key.endswith("/hand") for key in out)


def test_study_metrics_per_part_thresholds() -> None:
    studies = aggregate_studies(hand_made_images())
    out = study_metrics(studies, prefix="test", thresholds={"XR_ELBOW": 0.42, "XR_WRIST": 0.7})
    # Elbow at 0.42: [0.6, 0.4, 0.45] -> [1, 0, 1], perfect. Wrist at 0.7: [0.6, 0.8] -> [0, 1], perfect.
    assert out["test_kappa/elbow"] == pytest.approx(1.0)
    assert out["test_kappa/wrist"] == pytest.approx(1.0)
    assert out["test_kappa"] == pytest.approx(1.0)
    # AUC ignores thresholds.
    assert out["test_auc"] == pytest.approx(study_metrics(studies, prefix="test")["test_auc"])


def test_study_metrics_with_one_class_part() -> None:
    studies = pd.DataFrame(
        {"study_path": ["a", "b", "c"], "body_part": ["XR_HAND"] * 3, "label": [0, 0, 0], "prob": [0.1, 0.2, 0.9]}
    )
    out = study_metrics(studies)
    assert math.isnan(out["val_auc/hand"])
    assert out["val_kappa/hand"] == pytest.approx(0.0)
    assert out["val_specificity/hand"] == pytest.approx(2 / 3)


def test_tune_threshold_finds_the_kappa_maximising_cut() -> None:
    # Positives sit above 0.25, negatives below, except one negative at 0.8: the best cut is between 0.2 and 0.3.
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 0])
    probs = np.array([0.05, 0.1, 0.15, 0.2, 0.3, 0.35, 0.4, 0.9, 0.8])
    cut = tune_threshold(labels, probs)
    assert cut == pytest.approx(0.25)
    best = binary_metrics(labels, probs, cut)["kappa"]
    grid = [0.0, *np.linspace(0.025, 0.975, 39), 1.01]  # steps of 0.025: one cut between every pair of values
    assert best >= max(binary_metrics(labels, probs, float(t))["kappa"] for t in grid) - 1e-12
    assert best > binary_metrics(labels, probs, 0.5)["kappa"]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(4, 40))
def test_tune_threshold_is_best_of_all_data_cuts(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    labels[:2] = [0, 1]
    probs = np.round(rng.random(n), 2)  # ties included
    values = np.unique(probs)
    cuts = [0.5, *((values[:-1] + values[1:]) / 2)]
    sklearn_best = max(cohen_kappa_score(labels, (probs >= c).astype(int)) for c in cuts)
    cut = tune_threshold(labels, probs)
    assert cohen_kappa_score(labels, (probs >= cut).astype(int)) == pytest.approx(sklearn_best, abs=1e-9)
    assert kappa_at_thresholds(labels, probs, np.array(cuts)) == pytest.approx(
        [binary_metrics(labels, probs, c)["kappa"] for c in cuts], abs=1e-9
    )


def test_tune_threshold_with_one_class_returns_default() -> None:
    assert tune_threshold(np.array([1, 1, 1]), np.array([0.2, 0.3, 0.9])) == 0.5
