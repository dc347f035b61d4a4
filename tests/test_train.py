"""Tests for muratune.trainables: real resnet10t trials on the synthetic data, standalone and inside Ray Tune."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from muratune.config import ExperimentConfig, load_config
from muratune.trainables import checkpoint as ckpt
from muratune.trainables.data import prepare_data
from muratune.trainables.loop import TrialFailed
from muratune.trainables.models import create_model
from muratune.trainables.reporters import FolderReporter
from muratune.trainables.trial import train_trial, tune_trainable
from tests.helpers.search import DEMO_CONFIG, tiny_overrides

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

DEMO = DEMO_CONFIG
CHECKPOINT_FILES = {ckpt.MODEL_FILE, ckpt.TRIAL_FILE, ckpt.STATE_FILE, ckpt.VAL_STUDIES_FILE, ckpt.VAL_IMAGES_FILE}


def make_settings(root: Path, storage: Path, **extra: object) -> ExperimentConfig:
    """The demo config shrunk to a few steps per epoch on 64 px images."""
    return load_config(DEMO, tiny_overrides(root, storage, **{"train.max_steps_per_epoch": 4, **extra}))


def hyperparameters(settings: ExperimentConfig) -> dict:
    return {**settings.space.defaults(), "lr": 1e-3, "batch_size": 16, "optimizer": "adam", "augment_policy": "flip"}


def val_study_count(settings: ExperimentConfig) -> int:
    data = prepare_data(settings)
    return data.val["study_path"].nunique()


@pytest.fixture(scope="module")
def standalone(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ExperimentConfig, dict]:
    """A standalone two-epoch trial written by FolderReporter; returns (out, settings, last metrics)."""
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("standalone")
    settings = make_settings(synthetic_root, base / "runs")
    lines: list[str] = []
    metrics = train_trial(hyperparameters(settings), settings, FolderReporter(base / "out", echo=lines.append))
    assert len(lines) == 2 and lines[0].startswith("epoch   1")
    return base / "out", settings, metrics


def test_standalone_trial_writes_checkpoints(standalone) -> None:
    out, settings, metrics = standalone
    assert metrics["epoch"] == 2
    assert {"val_kappa", "val_auc", "val_loss", "train_loss", "lr", "val_image_auc"} <= set(metrics)
    assert np.isfinite(metrics["train_loss"]) and np.isfinite(metrics["val_loss"])
    assert any(key.startswith("val_kappa/") for key in metrics)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint_000001", "checkpoint_000002"]
    for name in ("checkpoint_000001", "checkpoint_000002"):
        assert CHECKPOINT_FILES <= {p.name for p in (out / name).iterdir()}
    assert sorted(p.parent.name for p in out.glob(f"*/{ckpt.OPTIMIZER_FILE}")) == ["checkpoint_000002"]
    assert not (out / "checkpoint_000001" / "optimizer.json").exists()

    studies = pd.read_parquet(out / "checkpoint_000002" / ckpt.VAL_STUDIES_FILE)
    images = pd.read_parquet(out / "checkpoint_000002" / ckpt.VAL_IMAGES_FILE)
    assert studies["study_path"].is_unique
    assert len(studies) == val_study_count(settings) == metrics["val_studies"]
    assert studies["n_views"].sum() == len(images)
    assert studies.set_index("study_path")["prob"].to_dict() == pytest.approx(
        images.groupby("study_path")["prob"].mean().to_dict()
    )
    trial = ckpt.read_json(out / "checkpoint_000002" / ckpt.TRIAL_FILE)
    assert trial["epoch"] == 2 and trial["backbone"] == "resnet10t"
    assert trial["data_config"]["image_size"] == 64 and trial["data_config"]["in_chans"] == 1
    state = ckpt.read_json(out / "checkpoint_000002" / ckpt.STATE_FILE)
    assert [row["epoch"] for row in state["history"]] == [1, 2]
    assert state["schedule"]["step_count"] == 2 * 4  # max_steps_per_epoch caps each epoch


def test_same_seed_repeats_the_trial_exactly(standalone, tmp_path: Path) -> None:
    """train.seed fixes init, shuffle and augmentation: a rerun matches; another seed does not."""
    _, settings, first = standalone
    keys = ("train_loss", "val_loss", "val_auc")
    again = train_trial(hyperparameters(settings), settings, FolderReporter(tmp_path / "again"))
    assert {k: again[k] for k in keys} == {k: first[k] for k in keys}
    reseeded = settings.model_copy(update={"train": settings.train.model_copy(update={"seed": 1})})
    other = train_trial(hyperparameters(settings), reseeded, FolderReporter(tmp_path / "other"))
    assert other["train_loss"] != first["train_loss"]


def test_standalone_resume_continues_at_epoch_three(standalone, tmp_path: Path) -> None:
    out, settings, _ = standalone
    resumed = tmp_path / "out"
    shutil.copytree(out, resumed)
    longer = settings.model_copy(update={"budget": settings.budget.model_copy(update={"max_epochs": 3})})
    reporter = FolderReporter(resumed, resume=True, echo=lambda line: None)
    metrics = train_trial(hyperparameters(settings), longer, reporter)
    assert [row["epoch"] for row in reporter.history] == [3]
    assert metrics["epoch"] == 3
    state = ckpt.read_json(resumed / "checkpoint_000003" / ckpt.STATE_FILE)
    assert [row["epoch"] for row in state["history"]] == [1, 2, 3]
    assert state["schedule"]["step_count"] == 3 * 4
    assert sorted(p.parent.name for p in resumed.glob(f"*/{ckpt.OPTIMIZER_FILE}")) == ["checkpoint_000003"]


def test_nan_loss_fails_the_trial(synthetic_root: Path, tmp_path: Path) -> None:
    settings = make_settings(synthetic_root, tmp_path / "runs", **{"debug.fault": "nan", "debug.fault_epoch": 1})
    with pytest.raises(TrialFailed, match="loss became nan"):
        train_trial(hyperparameters(settings), settings, FolderReporter(tmp_path / "out"))
    assert not list((tmp_path / "out").glob("checkpoint_*"))


def rebuilt_probs(checkpoint: Path, settings: ExperimentConfig, image_paths: list[str]) -> np.ndarray:
    """Probabilities from a model rebuilt from trial.json + model.safetensors alone, on cached val images."""
    from muratune.data.dataset import CachedImageDataset

    trial = ckpt.read_json(checkpoint / ckpt.TRIAL_FILE)
    model = create_model(trial["backbone"], in_chans=trial["data_config"]["in_chans"])
    ckpt.load_weights(model, checkpoint / ckpt.MODEL_FILE)
    model.eval()
    data = prepare_data(settings)
    frame = data.val.set_index("image_path").loc[image_paths].reset_index()
    dataset = CachedImageDataset(data.cache, frame)
    batch = torch.stack([dataset[i][0] for i in range(len(dataset))]).float()
    mean = torch.tensor(trial["data_config"]["mean"]).view(1, -1, 1, 1) * 255
    std = torch.tensor(trial["data_config"]["std"]).view(1, -1, 1, 1) * 255
    with torch.no_grad():
        return torch.sigmoid(model((batch - mean) / std).squeeze(1)).numpy()


def tune_run(settings: ExperimentConfig, storage: Path, name: str):
    """One Tune trial of the function trainable with constant hyperparameters."""
    from ray import tune

    trainable = tune.with_resources(
        tune.with_parameters(tune_trainable, experiment_config=settings.model_dump(mode="json")), {"cpu": 1}
    )
    tuner = tune.Tuner(
        trainable,
        param_space=hyperparameters(settings),
        tune_config=tune.TuneConfig(num_samples=1, metric="val_kappa", mode="max"),
        run_config=tune.RunConfig(
            storage_path=str(storage),
            name=name,
            failure_config=tune.FailureConfig(max_failures=0),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            verbose=0,
        ),
    )
    return tuner, trainable


def test_tune_trial_checkpoints_reload_and_resume(ray_session, synthetic_root: Path, tmp_path: Path) -> None:
    from ray import tune

    storage = tmp_path / "ray-results"
    # First run: epochs 1 and 2 report checkpoints, then epoch 3 crashes (max_failures=0, so the trial errors).
    crashing = make_settings(
        synthetic_root, tmp_path / "runs", **{"budget.max_epochs": 3, "debug.fault": "crash", "debug.fault_epoch": 3}
    )
    tuner, _ = tune_run(crashing, storage, "resume")
    results = tuner.fit()
    result = results[0]
    assert result.error is not None and "injected by debug.fault=crash" in str(result.error)
    assert result.metrics["epoch"] == 2
    best = result.get_best_checkpoint("val_kappa", "max")
    assert best is not None
    with result.checkpoint.as_directory() as latest:
        latest = Path(latest)
        assert CHECKPOINT_FILES | {ckpt.OPTIMIZER_FILE} <= {p.name for p in latest.iterdir()}
        assert ckpt.read_json(latest / ckpt.STATE_FILE)["epoch"] == 2
    with best.as_directory() as best_dir:
        best_dir = Path(best_dir)
        images = pd.read_parquet(best_dir / ckpt.VAL_IMAGES_FILE).head(12)
        probs = rebuilt_probs(best_dir, crashing, images["image_path"].tolist())
        np.testing.assert_allclose(probs, images["prob"].to_numpy(), rtol=1e-4, atol=1e-5)
    trial_dir = Path(result.path)
    checkpoints = sorted(trial_dir.glob("checkpoint_*"))
    assert len(checkpoints) == 2
    assert [p.name for p in checkpoints if (p / ckpt.OPTIMIZER_FILE).exists()] == [checkpoints[-1].name]

    # Restore the errored trial without the fault: it resumes from the epoch-2 checkpoint and runs epoch 3 only.
    fixed = crashing.model_copy(update={"debug": crashing.debug.model_copy(update={"fault": None})})
    _, trainable = tune_run(fixed, storage, "resume")
    restored = tune.Tuner.restore(str(storage / "resume"), trainable, resume_errored=True).fit()
    final = restored[0]
    assert final.error is None
    assert final.metrics["epoch"] == 3
    assert final.metrics_dataframe["epoch"].tolist() == [1, 2, 3]
    with final.checkpoint.as_directory() as last:
        state = json.loads((Path(last) / ckpt.STATE_FILE).read_text())
    assert [row["epoch"] for row in state["history"]] == [1, 2, 3]
    assert state["schedule"]["step_count"] == 3 * 4


def plateau_lrs(losses: list[float], lr: float) -> list[float]:
    """The learning rates ReduceLROnPlateau (the schedule's settings) gives after watching ``losses``, one per epoch."""
    import torch.optim.lr_scheduler as schedulers

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    plateau = schedulers.ReduceLROnPlateau(optimizer, mode="min", factor=0.1, patience=1)
    lrs = []
    for loss in losses:
        plateau.step(loss)
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def test_a_fold_models_plateau_schedule_follows_its_train_loss_not_its_held_out_fold(
    synthetic_root: Path, tmp_path: Path
) -> None:
    """In a refit the val subset is the held-out fold: its loss must not time the learning-rate drops."""
    from muratune.constants import LEARNING_RATE, TRAIN_LOSS, VAL_LOSS
    from muratune.trainables.trial import plateau_signal

    extra = {"train.schedule": "plateau", "train.warmup_epochs": 0, "budget.max_epochs": 5}
    fold = make_settings(synthetic_root, tmp_path / "runs", **extra, **{"data.folds": 2, "data.fold": 0})
    search = make_settings(synthetic_root, tmp_path / "runs", **extra)
    assert plateau_signal(fold, 1.0, 2.0) == 1.0 and plateau_signal(search, 1.0, 2.0) == 2.0

    hparams = {**hyperparameters(fold), "lr": 0.05}
    reporter = FolderReporter(tmp_path / "fold", echo=lambda line: None)
    train_trial(hparams, fold, reporter)
    history = reporter.history
    assert len(history) == 5 and all(np.isfinite(m[VAL_LOSS]) for m in history)
    expected = plateau_lrs([m[TRAIN_LOSS] for m in history], hparams["lr"])
    assert [m[LEARNING_RATE] for m in history] == pytest.approx(expected)
    # this run tells the two apart: the held-out fold's loss would have cut the learning rate
    assert plateau_lrs([m[VAL_LOSS] for m in history], hparams["lr"]) != pytest.approx(expected)
