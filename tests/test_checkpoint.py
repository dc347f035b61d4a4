"""Tests for muratune.trainables.checkpoint: exact round trips without pickle, corrupt files, stripping."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from muratune.errors import UserError
from muratune.trainables import checkpoint as ckpt
from muratune.trainables.models import create_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("resnet10t", in_chans=1)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> float:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(4, 1, 32, 32, generator=generator)
    labels = torch.tensor([0.0, 1.0, 1.0, 0.0])
    model.train()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images).squeeze(1), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


@pytest.fixture()
def trained(tmp_path: Path) -> tuple[torch.nn.Module, torch.optim.Optimizer, Path]:
    """A model and Adam optimizer after two steps, saved to a checkpoint folder."""
    model = make_model(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    for step in range(2):
        train_step(model, optimizer, step)
    images = pd.DataFrame({"image_path": ["a.png", "b.png"], "prob": [0.2, 0.9]})
    studies = pd.DataFrame({"study_path": ["s1"], "prob": [0.55], "n_views": [2]})
    directory = ckpt.save_checkpoint(
        tmp_path / "checkpoint_000002",
        model,
        trial={"backbone": "resnet10t", "epoch": 2, "metrics": {"val_kappa": 0.5, "val_auc": float("nan")}},
        state={"epoch": 2, "history": [{"epoch": 1}, {"epoch": 2}]},
        val_images=images,
        val_studies=studies,
        optimizer=optimizer,
    )
    return model, optimizer, directory


def test_checkpoint_files_and_json(trained) -> None:
    _, _, directory = trained
    files = {p.name for p in directory.iterdir()}
    assert files == {
        ckpt.MODEL_FILE,
        ckpt.TRIAL_FILE,
        ckpt.STATE_FILE,
        ckpt.VAL_IMAGES_FILE,
        ckpt.VAL_STUDIES_FILE,
        ckpt.OPTIMIZER_FILE,
        "optimizer.json",
    }
    trial = json.loads((directory / ckpt.TRIAL_FILE).read_text())  # strict JSON: NaN became null
    assert trial["metrics"] == {"val_kappa": 0.5, "val_auc": None}
    assert ckpt.read_json(directory / ckpt.STATE_FILE)["epoch"] == 2
    assert pd.read_parquet(directory / ckpt.VAL_STUDIES_FILE)["prob"].tolist() == [0.55]


def test_weights_round_trip_gives_identical_outputs(trained) -> None:
    model, _, directory = trained
    fresh = make_model(1)
    batch = torch.randn(3, 1, 48, 48)
    model.eval()
    fresh.eval()
    assert not torch.equal(model(batch), fresh(batch))
    ckpt.load_weights(fresh, directory / ckpt.MODEL_FILE)
    with torch.no_grad():
        assert torch.equal(model(batch), fresh(batch))
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(a, b), name  # BatchNorm buffers included


def test_optimizer_round_trip_continues_identically(trained) -> None:
    model, optimizer, directory = trained
    fresh = make_model(1)
    ckpt.load_weights(fresh, directory / ckpt.MODEL_FILE)
    fresh_optimizer = torch.optim.Adam(fresh.parameters(), lr=0.5)
    ckpt.load_optimizer(fresh_optimizer, directory)

    assert fresh_optimizer.param_groups[0]["lr"] == 1e-3
    assert fresh_optimizer.param_groups[0]["weight_decay"] == 1e-4
    original, restored = optimizer.state_dict()["state"], fresh_optimizer.state_dict()["state"]
    assert set(original) == set(restored)
    for index, slots in original.items():
        assert torch.equal(slots["exp_avg"], restored[index]["exp_avg"])
        assert torch.equal(slots["exp_avg_sq"], restored[index]["exp_avg_sq"])
        assert float(slots["step"]) == float(restored[index]["step"]) == 2.0

    loss_a = train_step(model, optimizer, seed=7)
    loss_b = train_step(fresh, fresh_optimizer, seed=7)
    assert loss_a == loss_b
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_no_pickle_in_checkpoint(trained) -> None:
    _, _, directory = trained
    for path in directory.iterdir():
        assert not path.read_bytes().startswith(b"\x80"), path.name  # pickle protocol 2+ magic
        assert path.suffix in (".safetensors", ".json", ".parquet")


@pytest.mark.parametrize("damage", ["truncate", "overwrite_header", "empty", "pickle"])
def test_corrupt_weights_are_a_user_error(trained, damage: str) -> None:
    _, _, directory = trained
    path = directory / ckpt.MODEL_FILE
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "overwrite_header":
        path.write_bytes(data[:8] + b"\xff" * 64 + data[72:])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        torch.save(make_model(2).state_dict(), path)  # a pickle under the safetensors name is never unpickled
    with pytest.raises(UserError, match="model.safetensors"):
        ckpt.load_weights(make_model(1), path)


def test_weights_of_another_model_are_a_user_error(trained) -> None:
    _, _, directory = trained
    other = create_model("resnet14t", in_chans=1)
    with pytest.raises(UserError, match="do not fit"):
        ckpt.load_weights(other, directory / ckpt.MODEL_FILE)


def test_missing_or_bad_json_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        ckpt.read_json(tmp_path / "trial.json")
    (tmp_path / "trial.json").write_text("{broken")
    with pytest.raises(UserError, match="invalid JSON"):
        ckpt.read_json(tmp_path / "trial.json")


def test_strip_optimizer_state_keeps_only_the_newest(tmp_path: Path) -> None:
    model = make_model(0)
    optimizer = torch.optim.Adam(model.parameters())
    train_step(model, optimizer, 0)
    for epoch in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path / f"checkpoint_{epoch:06d}", model, {}, {"epoch": epoch}, optimizer=optimizer)
    newest = tmp_path / "checkpoint_000003"
    assert ckpt.strip_optimizer_state(tmp_path, keep=newest) == 2
    with_optimizer = sorted(p.parent.name for p in tmp_path.glob(f"*/{ckpt.OPTIMIZER_FILE}"))
    assert with_optimizer == ["checkpoint_000003"]
    assert not list(tmp_path.glob("checkpoint_00000[12]/optimizer.json"))
    assert all((tmp_path / f"checkpoint_{e:06d}" / ckpt.MODEL_FILE).is_file() for e in (1, 2, 3))
    assert ckpt.strip_optimizer_state(tmp_path, keep=newest) == 0
