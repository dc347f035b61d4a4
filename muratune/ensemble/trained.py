"""A trained model with what it needs to be fed (input size, resize mode, normalisation), loaded from a checkpoint."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from muratune.data.dataset import Normalizer
from muratune.layout import TRIAL_FILE
from muratune.schemas import validate_trial
from muratune.trainables import checkpoint as ckpt


@dataclass
class TrainedModel:
    """One trained model with what is needed to feed it: weights, input size, resize mode and normalisation."""

    name: str
    model: torch.nn.Module
    trial: dict
    weight: float = 1.0
    normalizer: Normalizer = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.data_config
        self.normalizer = Normalizer(cfg["mean"], cfg["std"], cfg["in_chans"])

    @property
    def data_config(self) -> dict:
        """``image_size``, ``resize_mode``, ``in_chans``, ``mean`` and ``std`` the model was trained with."""
        return self.trial["data_config"]

    @property
    def image_size(self) -> int:
        """Side of the square input."""
        return int(self.data_config["image_size"])

    @torch.no_grad()
    def predict(self, images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> np.ndarray:
        """Probabilities for a batch of ``N x S x S`` (or ``N x 1 x S x S``) uint8 images at this model's size."""
        batch = torch.as_tensor(images)
        if batch.dim() == 3:
            batch = batch.unsqueeze(1)
        self.model.eval()
        logits = self.model(self.normalizer(batch.to(device))).squeeze(1)
        return torch.sigmoid(logits.float()).cpu().numpy()


def build_model(trial: dict, source: str = TRIAL_FILE) -> torch.nn.Module:
    """Rebuild a model's architecture (random weights) from its ``trial.json`` record (checked by its schema)."""
    from muratune.trainables.models import create_model

    record = validate_trial(trial, source)
    return create_model(record.backbone, pretrained=False, in_chans=record.data_config.in_chans)


def load_trained_model(directory: str | os.PathLike, weight: float = 1.0, name: str | None = None) -> TrainedModel:
    """Load a trained model from a checkpoint folder holding ``model.safetensors`` and ``trial.json``."""
    directory = Path(directory)
    trial = ckpt.read_json(directory / ckpt.TRIAL_FILE)
    model = build_model(trial, str(directory / ckpt.TRIAL_FILE))
    ckpt.load_weights(model, directory / ckpt.MODEL_FILE)
    model.eval()
    return TrainedModel(name=name or directory.name, model=model, trial=trial, weight=weight)
