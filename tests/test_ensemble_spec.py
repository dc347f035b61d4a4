"""``ensemble.json`` through its one schema: old keys still load, written files round-trip, one experiment opener."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from muratune.errors import UserError
from muratune.experiment_folder import experiment_config_file, load_resolved_config
from muratune.report.experiment import Experiment, load_experiment, read_ensembles
from muratune.report.leaderboard import ENSEMBLE, build_entries
from muratune.schemas import (
    ENSEMBLE_FORMAT,
    CalibrationSpec,
    DefaultChoice,
    EnsembleSpec,
    MemberEntry,
    read_ensemble_spec,
    validate_ensemble,
)
from tests.helpers.ensemble import CV_KEYS, SEARCH_KEYS

SHA = "0" * 64
DATA_CONFIG = {"image_size": 64, "resize_mode": "pad", "in_chans": 3, "mean": [0.5] * 3, "std": [0.25] * 3}


def _member(name: str) -> MemberEntry:
    return MemberEntry(
        name=name,
        path=f"members/{name}",
        trial_id=name,
        backbone="resnet10t",
        data_config=DATA_CONFIG,
        sha256=SHA,
        source=f"/runs/{name}",
    )


def _search_spec(tune_thresholds: bool = True) -> EnsembleSpec:
    """As `muratune ensemble` builds one."""
    return EnsembleSpec(
        format=ENSEMBLE_FORMAT,
        muratune_version="0.2.0",
        strategy="greedy",
        size=3,
        ranked_by="kappa",
        tta=False,
        calibration=CalibrationSpec(fitted_on="internal-val", temperature={"all": 1.2, "XR_HAND": 0.8}),
        thresholds={"XR_HAND": 0.4},
        threshold_default=0.5,
        tune_thresholds=tune_thresholds,
        weights={"all": [2.0, 1.0]},
        data_config=DATA_CONFIG,
        val_score={"val_kappa": 0.5, "val_auc": None},
        test_score={"test_kappa": 0.4, "test_auc": 0.7, "test_accuracy": 0.7},
        members=[_member("a"), _member("b")],
    )


def _cv_spec() -> EnsembleSpec:
    """As `muratune refit` builds one."""
    return EnsembleSpec(
        format=ENSEMBLE_FORMAT,
        muratune_version="0.2.0",
        strategy="cv",
        selected_strategy="greedy",
        size=5,
        ranked_by="kappa",
        tta=True,
        calibration=CalibrationSpec(fitted_on="out-of-fold", temperature={"all": 1.5}),
        thresholds={},
        threshold_default=0.5,
        tune_thresholds=True,
        folds=2,
        epochs=1,
        weights={"all": [0.5, 0.5]},
        data_config=DATA_CONFIG,
        configurations={"x": 1.0},
        dropped_configurations={},
        oof_score={"oof_kappa": 0.3},
        test_score={"test_kappa": 0.2, "test_auc": 0.6, "test_accuracy": 0.6},
        default=DefaultChoice(
            predictor="cv", path="ensemble/cv", rule="a rule", reason="a reason", evidence={"kappa_diff": 0.1}
        ),
        members=[_member("x_fold0"), _member("x_fold1")],
    )


@pytest.mark.parametrize(("spec", "keys"), [(_search_spec(), SEARCH_KEYS), (_cv_spec(), CV_KEYS)])
def test_a_written_spec_has_the_writers_keys_in_file_order_and_round_trips(spec, keys, tmp_path: Path):
    data = spec.to_json()
    assert list(data) == keys and "_used" not in data
    assert list(data["members"][0]) == ["name", "path", "trial_id", "backbone", "data_config", "sha256", "source"]
    path = tmp_path / "ensemble.json"
    path.write_text(json.dumps(data))
    again = read_ensemble_spec(path)
    assert again == spec and again.to_json() == data


def test_format_is_written_even_when_left_to_its_default():
    spec = EnsembleSpec(weights={"all": [1.0]}, members=[_member("a")])
    assert spec.to_json() == {
        "format": ENSEMBLE_FORMAT,
        "weights": {"all": [1.0]},
        "members": [_member("a").model_dump(mode="json")],
    }


def test_an_old_thresholds_tuned_file_loads_and_is_written_back_with_the_new_key(tmp_path: Path):
    old = {k: v for k, v in _search_spec().to_json().items() if k != "tune_thresholds"}
    old["thresholds_tuned"] = True
    path = tmp_path / "ensemble.json"
    path.write_text(json.dumps(old))
    spec = read_ensemble_spec(path)
    assert spec.tune_thresholds is True
    assert spec.to_json() == _search_spec().to_json()


def test_both_keys_at_once_are_refused(tmp_path: Path):
    path = tmp_path / "ensemble.json"
    path.write_text(json.dumps({**_search_spec().to_json(), "thresholds_tuned": False}))
    with pytest.raises(UserError, match="thresholds_tuned: unknown key"):
        read_ensemble_spec(path)


@pytest.mark.parametrize("key", ["thresholds_tuned", "tune_thresholds"])
def test_the_report_reads_either_key(tmp_path: Path, key: str):
    folder = tmp_path / "ensemble" / "greedy"
    folder.mkdir(parents=True)
    data = {k: v for k, v in _search_spec().to_json().items() if k != "tune_thresholds"}
    (folder / "ensemble.json").write_text(json.dumps({**data, key: True}))
    labels = np.array([0, 1, 1, 0])
    studies = pd.DataFrame(
        {"study_path": list("abcd"), "body_part": "XR_HAND", "label": labels, "prob": [0.2, 0.8, 0.6, 0.3]}
    ).assign(pred=lambda f: (f["prob"] >= 0.5).astype(int))
    studies.to_parquet(folder / "test_studies.parquet")
    ensembles = read_ensembles(tmp_path)
    assert [e.name for e in ensembles] == ["greedy"] and ensembles[0].spec.tune_thresholds is True
    summary = pd.DataFrame(columns=["trial_id", "state", "best_val_kappa", "time_s"])
    exp = Experiment(path=tmp_path, name="x", config={}, summary=summary, ensembles=ensembles)
    (entry,) = [e for e in build_entries(exp, replicates=10) if e.kind == ENSEMBLE]
    assert entry.details["thresholds"] == "tuned per body part" and entry.val_kappa == 0.5
    assert entry.details["members"] == "a, b"


def test_a_folder_that_is_not_an_experiment_is_one_line_in_every_stage(tmp_path: Path):
    from muratune.dashboard import study_storage
    from muratune.ensemble.build import build_ensembles

    message = f"{tmp_path}: not a muratune experiment folder (no resolved_config.yaml)"
    for opener in (experiment_config_file, load_resolved_config, load_experiment, study_storage, build_ensembles):
        with pytest.raises(UserError) as err:
            opener(tmp_path)
        assert str(err.value).startswith(message) and "\n" not in str(err.value), opener


def test_an_ensemble_without_calibration_writes_no_calibration_key():
    uncalibrated = _search_spec().model_copy(update={"calibration": None})
    content = uncalibrated.to_json()
    assert "calibration" not in content  # as an ensemble.json written before calibration existed
    assert list(content) == [key for key in SEARCH_KEYS if key != "calibration"]
    assert validate_ensemble(content, "ensemble.json").calibration is None
