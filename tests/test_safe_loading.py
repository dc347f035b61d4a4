"""Tampered ensembles through `predict`: refused with one clear line (exit 2) before any image is read; no pickle."""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers.cli import assert_one_line_error, run
from tests.helpers.ensemble import make_ensemble
from tests.helpers.files import tree_digest
from tests.helpers.mura import make_mura


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ensemble(tmp_path_factory.mktemp("ensemble"))


def _spec(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        spec = json.loads((folder / "ensemble.json").read_text())
        edit(spec)
        (folder / "ensemble.json").write_text(json.dumps(spec))

    return apply


def _trial(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        path = folder / "members" / "m0" / "trial.json"
        trial = json.loads(path.read_text())
        edit(trial)
        path.write_text(json.dumps(trial))

    return apply


def _without_checksum(folder: Path) -> None:
    _spec(lambda spec: spec["members"][0].pop("sha256"))(folder)


def _wrong_tensor_shape(folder: Path) -> None:
    path = folder / "members" / "m0" / "model.safetensors"
    tensors = load_file(str(path))
    name = next(iter(tensors))
    tensors[name] = torch.zeros(3, 3)
    save_file(tensors, str(path))
    _without_checksum(folder)


class _Payload:
    """Unpickling this would run code; a loader that unpickles would write the marker file."""

    def __reduce__(self):
        return (Path.write_text, (Path("/tmp/muratune-unpickled-marker"), "unpickled"))


def _pickle_in_place_of_weights(folder: Path) -> None:
    (folder / "members" / "m0" / "model.safetensors").write_bytes(pickle.dumps(_Payload()))
    _without_checksum(folder)


TAMPERING: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "member path outside the artifact": (
        _spec(lambda spec: spec["members"][0].update(path="../../elsewhere/m0")),
        ["ensemble.json", "'../../elsewhere/m0'", "leaves the ensemble folder"],
    ),
    "absolute member path": (
        _spec(lambda spec: spec["members"][0].update(path="/etc")),
        ["ensemble.json", "'/etc'", "leaves the ensemble folder"],
    ),
    "wrong weights shape": (
        _spec(lambda spec: spec.update(weights={"all": [0.5, 0.5]})),
        ["ensemble.json", "weights.all", "2 weight(s) for 1 member(s)"],
    ),
    "weights whose sum overflows": (
        _spec(lambda spec: spec.update(members=spec["members"] * 2, weights={"all": [1e308, 1e308]})),
        ["ensemble.json", "weights.all", "finite, positive sum"],
    ),
    "an infinite weight": (
        lambda folder: (folder / "ensemble.json").write_text(
            (folder / "ensemble.json").read_text().replace('"all": [\n      1.0\n    ]', '"all": [Infinity]')
        ),
        ["ensemble.json", "weights.all.0", "finite number"],
    ),
    "a negative weight": (
        _spec(lambda spec: spec.update(weights={"all": [-1.0]})),
        ["ensemble.json", "weights.all.0", "greater than or equal to 0"],
    ),
    "threshold not a number": (
        _spec(lambda spec: spec.update(thresholds={"XR_WRIST": "high"})),
        ["ensemble.json", "thresholds.XR_WRIST", "valid number"],
    ),
    "threshold above 1": (
        _spec(lambda spec: spec.update(thresholds={"XR_WRIST": 1.5})),
        ["ensemble.json", "thresholds.XR_WRIST", "less than or equal to 1"],
    ),
    "threshold for an unknown body part": (
        _spec(lambda spec: spec.update(thresholds={"XR_KNEE": 0.5})),
        ["ensemble.json", "thresholds", "'XR_KNEE'"],
    ),
    '"tta": "no"': (_spec(lambda spec: spec.update(tta="no")), ["ensemble.json", "tta", "valid boolean"]),
    "a misspelt key": (_spec(lambda spec: spec.update(TTA=True)), ["ensemble.json", "TTA", "unknown key"]),
    "no members": (_spec(lambda spec: spec.update(members=[])), ["ensemble.json", "members", "at least 1 item"]),
    "backbone not a string": (
        _trial(lambda trial: trial.update(backbone=["resnet10t"])),
        ["members/m0/trial.json", "backbone", "valid string"],
    ),
    "image size 0": (
        _trial(lambda trial: trial["data_config"].update(image_size=0)),
        ["trial.json", "data_config.image_size", "greater than or equal to 16"],
    ),
    "missing mean": (
        _trial(lambda trial: trial["data_config"].pop("mean")),
        ["trial.json", "data_config.mean", "Field required"],
    ),
    "mean and std not one per channel": (
        _trial(lambda trial: trial["data_config"].update(mean=[0.5, 0.5, 0.5])),
        ["trial.json", "data_config", "mean has 3 value(s) for in_chans 1"],
    ),
    "trial.json not UTF-8": (
        lambda folder: (folder / "members" / "m0" / "trial.json").write_bytes(
            '{"backbone": "r\xe9"}'.encode("latin-1")
        ),
        ["trial.json", "not UTF-8"],
    ),
    "replaced weights file": (
        lambda folder: (folder / "members" / "m0" / "model.safetensors").write_bytes(b"\0" * 64),
        ["model.safetensors", "checksum does not match"],
    ),
    "wrong tensor shape": (_wrong_tensor_shape, ["model.safetensors", "weights do not fit the model"]),
    "pickle in place of safetensors": (_pickle_in_place_of_weights, ["model.safetensors", "cannot read model weights"]),
    "ensemble.json not JSON": (
        lambda folder: (folder / "ensemble.json").write_text("{not json"),
        ["ensemble.json", "invalid JSON"],
    ),
}


@pytest.mark.parametrize("name", list(TAMPERING))
def test_a_tampered_ensemble_is_refused(ensemble: Path, tmp_path: Path, capsys, name: str) -> None:
    tamper, fragments = TAMPERING[name]
    folder = tmp_path / "ensemble"
    shutil.copytree(ensemble, folder)
    tamper(folder)
    marker = Path("/tmp/muratune-unpickled-marker")
    marker.unlink(missing_ok=True)
    fixture = make_mura(tmp_path / "data")
    out = tmp_path / "out.csv"
    before = tree_digest(folder), tree_digest(fixture.base)
    code, _, err = run(["predict", str(folder), str(fixture.csv("valid_image_paths.csv")), str(out)], capsys)
    assert code == 2
    assert_one_line_error(err, fragments)
    assert not out.exists()
    assert not marker.exists(), "nothing may be unpickled"
    assert (tree_digest(folder), tree_digest(fixture.base)) == before


@pytest.mark.parametrize("new_keys", [False, True])
def test_old_and_new_artifact_keys_both_load(ensemble: Path, tmp_path: Path, new_keys: bool) -> None:
    """``thresholds_tuned``/``settings`` (old) and ``tune_thresholds``/``experiment_config`` (new) are both read."""
    from muratune.ensemble.predictor import StudyPredictor
    from muratune.schemas import read_ensemble_spec, read_trial_record

    folder = tmp_path / "ensemble"
    shutil.copytree(ensemble, folder)
    flag, config = ("tune_thresholds", "experiment_config") if new_keys else ("thresholds_tuned", "settings")
    _spec(lambda spec: spec.update({flag: True, "thresholds": {"XR_WRIST": 0.25}, "tta": True}))(folder)
    _trial(lambda trial: trial.update({config: {"name": "exp"}, "extra_note": "kept"}))(folder)
    assert read_ensemble_spec(folder / "ensemble.json").tune_thresholds is True
    assert read_trial_record(folder / "members" / "m0" / "trial.json").experiment_config == {"name": "exp"}
    predictor = StudyPredictor.load(folder, device="cpu")
    assert predictor.tta is True and predictor.threshold("XR_WRIST") == 0.25
