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

from tests.helpers.mura import make_mura
from tests.test_bad_data import assert_one_line_error, make_ensemble, run


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ensemble(tmp_path_factory.mktemp("ensemble"))


def _spec(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        spec = json.loads((folder / "ensemble.json").read_text())
        edit(spec)
        (folder / "ensemble.json").write_text(json.dumps(spec))

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
        ["ensemble.json", "weights['all']", "got shape (2,)"],
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
    code, _, err = run(["predict", str(folder), str(fixture.csv("valid_image_paths.csv")), str(out)], capsys)
    assert code == 2
    assert_one_line_error(err, fragments)
    assert not out.exists()
    assert not marker.exists(), "nothing may be unpickled"
