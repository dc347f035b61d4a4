"""Checkpoints without pickle: safetensors for tensors, JSON for everything else, parquet for predictions."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from muratune.errors import UserError
from muratune.fileio import atomic_path, json_safe, write_json
from muratune.layout import (
    MODEL_FILE,
    OPTIMIZER_FILE,
    OPTIMIZER_META_FILE,
    STATE_FILE,
    TRIAL_FILE,
    VAL_IMAGES_FILE,
    VAL_STUDIES_FILE,
)
from muratune.schemas import read_json  # noqa: F401 - checkpoints are read through it as ckpt.read_json

__all__ = [
    "MODEL_FILE",
    "OPTIMIZER_FILE",
    "STATE_FILE",
    "TRIAL_FILE",
    "VAL_IMAGES_FILE",
    "VAL_STUDIES_FILE",
    "load_optimizer",
    "load_weights",
    "read_json",
    "save_checkpoint",
    "save_optimizer",
    "save_weights",
    "release_optimizer_state",
    "strip_optimizer_state",
]


def save_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Save a model's state dict as safetensors (contiguous CPU copies; shared storage is duplicated)."""
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


def load_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load safetensors weights into ``model``, with a clear error for a corrupt or mismatching file."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read model weights ({str(err).splitlines()[0]})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = next((line.strip() for line in str(err).splitlines()[1:] if line.strip()), str(err))
        raise UserError(f"{path}: weights do not fit the model ({first})") from None


def save_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Save optimizer state: tensors to safetensors, scalars and param groups to JSON (no pickle)."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = json_safe(value)
    with atomic_path(directory / OPTIMIZER_FILE) as tmp:
        save_file(tensors, str(tmp))
    write_json(directory / OPTIMIZER_META_FILE, {"scalars": scalars, "param_groups": json_safe(state["param_groups"])})


def load_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Restore optimizer state written by ``save_optimizer``."""
    meta = json.loads((directory / OPTIMIZER_META_FILE).read_text())
    tensors = load_file(str(directory / OPTIMIZER_FILE))
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, slots in meta["scalars"].items():
        state.setdefault(int(index), {}).update(slots)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    directory: str | os.PathLike,
    model: torch.nn.Module,
    trial: dict,
    state: dict,
    val_images: pd.DataFrame | None = None,
    val_studies: pd.DataFrame | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> Path:
    """Write a complete checkpoint folder.

    Args:
        directory: the folder to fill (created).
        model: weights go to ``model.safetensors``.
        trial: resolved config, timm name, data config, epoch and metrics, to ``trial.json``.
        state: resumable loop state (epoch, scheduler state, RNG-free counters, history), to ``state.json``.
        val_images: image-level internal-validation predictions.
        val_studies: study-level internal-validation predictions.
        optimizer: its state is saved when given (only the latest checkpoint needs it).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(model, directory / MODEL_FILE)
    write_json(directory / TRIAL_FILE, json_safe(trial))
    write_json(directory / STATE_FILE, json_safe(state))
    if val_images is not None:
        val_images.to_parquet(directory / VAL_IMAGES_FILE, index=False)
    if val_studies is not None:
        val_studies.to_parquet(directory / VAL_STUDIES_FILE, index=False)
    if optimizer is not None:
        save_optimizer(optimizer, directory)
    return directory


def release_optimizer_state(trial_dirs: Iterable[str | os.PathLike]) -> int:
    """Delete all optimizer state of trials that will never train again (finished ones); return files removed.

    Only the latest checkpoint of a running trial needs it (to resume); for a finished one it is about twice the
    model's size (Adam's two moments), which over a search of large backbones is most of the disk it uses.
    """
    return sum(strip_optimizer_state(d) for d in trial_dirs if Path(d).is_dir())


def strip_optimizer_state(trial_dir: str | os.PathLike, keep: str | os.PathLike | None = None) -> int:
    """Delete optimizer state from a trial's older checkpoints (only the latest needs it); return files removed."""
    removed = 0
    keep_path = Path(keep).resolve() if keep else None
    for file in Path(trial_dir).glob(f"checkpoint_*/{OPTIMIZER_FILE}"):
        if keep_path is not None and file.parent.resolve() == keep_path:
            continue
        for name in (OPTIMIZER_FILE, OPTIMIZER_META_FILE):
            (file.parent / name).unlink(missing_ok=True)
        removed += 1
    return removed
