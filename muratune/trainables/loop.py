"""The epoch loop: device and precision, one training epoch over a context object, and validation."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from muratune.config import ExperimentConfig
from muratune.constants import BODY_PART, IMAGE_PATH, LABEL, PATIENT_ID, PROB, STUDY_PATH, VAL_IMAGE_AUC, VAL_LOSS, VIEW
from muratune.data.dataset import CachedImageDataset, Normalizer
from muratune.metrics import aggregate_studies, binary_metrics, study_metrics
from muratune.trainables.optim import Schedule


class TrialFailed(RuntimeError):
    """A trial that cannot go on (non-finite loss, injected fault); Tune records it as failed with this reason."""


@dataclass
class Runtime:
    """Device and precision settings for one trial."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool

    @classmethod
    def create(cls, config: ExperimentConfig, device: torch.device | None = None) -> Runtime:
        """CUDA with AMP (bf16 where supported, else fp16); fp32 on the CPU. channels_last on CUDA and the CPU.

        channels_last also pays on the CPU (oneDNN; measured in docs/performance.md). MPS keeps the default layout.
        """
        from muratune.trainables.models import select_device

        device = device or select_device(prefer_gpu=config.resources.gpus_per_trial > 0)
        amp_dtype = None
        if device.type == "cuda" and config.train.amp:
            amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return cls(device, amp_dtype, config.train.channels_last and device.type in ("cuda", "cpu"))

    def autocast(self) -> torch.autocast:
        """Autocast context for the forward pass (a no-op on the CPU)."""
        if self.amp_dtype is None:
            return torch.autocast(device_type="cpu", enabled=False)
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def to_input(self, images: torch.Tensor, normalizer: Normalizer) -> torch.Tensor:
        """Move a uint8 batch to the device, then normalise there (less host work and transfer)."""
        images = images.to(self.device, non_blocking=True)
        batch = normalizer(images)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch


def weighted_bce(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The MURA paper's weighted binary cross-entropy (mean over the batch)."""
    losses = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")
    return (losses * weights).mean()


def inject_fault(config: ExperimentConfig, backbone: str, epoch: int) -> float | None:
    """Return NaN or raise, if the debug config asks this trial to fail at this epoch (testing only)."""
    debug = config.debug
    if debug.fault is None or epoch != debug.fault_epoch:
        return None
    if debug.fault_backbone is not None and debug.fault_backbone != backbone:
        return None
    if debug.fault == "oom":
        raise torch.OutOfMemoryError("CUDA out of memory (injected by debug.fault=oom)")
    if debug.fault == "crash":
        raise RuntimeError("trial crashed (injected by debug.fault=crash)")
    return math.nan


@dataclass
class EpochContext:
    """Everything one training epoch uses.

    Attributes:
        net: the model as trained (wrapped in DDP on data-parallel trials).
        loader: the training loader; yields ``(images, labels, study_indices)``.
        optimizer: the optimiser.
        schedule: the learning-rate schedule, stepped after every batch.
        scaler: the gradient scaler (active with fp16 autocast only).
        runtime: device and precision.
        normalizer: turns uint8 batches into model input on the device.
        weights_of: maps a batch's study indices to per-sample loss weights.
        grad_clip: gradient-norm clip (0 = off).
        max_steps: the most batches per epoch (None = the whole loader).
    """

    net: nn.Module
    loader: DataLoader | Any
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler
    runtime: Runtime
    normalizer: Normalizer
    weights_of: Callable[[torch.Tensor], torch.Tensor]
    grad_clip: float = 0.0
    max_steps: int | None = None


def train_one_epoch(ctx: EpochContext, fault: float | None = None) -> float:
    """One pass over the training loader (at most ``ctx.max_steps`` batches); returns the mean loss.

    Args:
        ctx: the epoch's model, data and optimiser.
        fault: a factor applied to the first loss (NaN injects a failure; testing only).

    Raises:
        TrialFailed: the loss became non-finite.
    """
    from muratune.trainables.models import freeze_frozen_batchnorm

    ctx.net.train()
    freeze_frozen_batchnorm(ctx.net)
    total, count = 0.0, 0
    for step, (images, labels, indices) in enumerate(ctx.loader):
        if ctx.max_steps is not None and step >= ctx.max_steps:
            break
        loss = _step(ctx, step, images, labels.to(ctx.runtime.device), indices, fault if step == 0 else None)
        total += loss * len(labels)
        count += len(labels)
    return total / max(count, 1)


def _step(
    ctx: EpochContext, step: int, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, fault: float | None
) -> float:
    """One optimiser step; returns the batch loss."""
    batch = ctx.runtime.to_input(images, ctx.normalizer)
    weights = ctx.weights_of(indices).to(ctx.runtime.device)
    with ctx.runtime.autocast():
        logits = ctx.net(batch).squeeze(1)
    loss = weighted_bce(logits, labels, weights)
    if fault is not None:
        loss = loss * fault
    if not torch.isfinite(loss):
        lr = ctx.optimizer.param_groups[0]["lr"]
        raise TrialFailed(f"loss became {loss.item()} at step {step} (lr={lr:.3g})")
    ctx.optimizer.zero_grad(set_to_none=True)
    ctx.scaler.scale(loss).backward()
    if ctx.grad_clip:
        ctx.scaler.unscale_(ctx.optimizer)
        nn.utils.clip_grad_norm_(ctx.net.parameters(), ctx.grad_clip)
    ctx.scaler.step(ctx.optimizer)
    ctx.scaler.update()
    ctx.schedule.step_batch()
    return float(loss.item())


@torch.no_grad()
def predict_probs(model: nn.Module, loader: DataLoader, runtime: Runtime, normalizer: Normalizer) -> np.ndarray:
    """Image probabilities for every sample of ``loader``, in order."""
    model.eval()
    probs = []
    for images, _, _ in loader:
        with runtime.autocast():
            logits = model(runtime.to_input(images, normalizer)).squeeze(1)
        probs.append(torch.sigmoid(logits.float()).cpu().numpy())
    return np.concatenate(probs) if probs else np.zeros(0, dtype=np.float32)


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    dataset: CachedImageDataset,
    runtime: Runtime,
    normalizer: Normalizer,
    weights: np.ndarray,
) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """Image-level loss and AUC plus study-level metrics on the internal validation subset."""
    probs = predict_probs(model, loader, runtime, normalizer)
    images = dataset.frame[[IMAGE_PATH, STUDY_PATH, PATIENT_ID, BODY_PART, LABEL, VIEW]].copy()
    images[PROB] = probs
    labels = images[LABEL].to_numpy(dtype=np.float32)
    clipped = np.clip(probs, 1e-7, 1 - 1e-7)
    losses = -(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))
    metrics = {VAL_LOSS: float(np.mean(losses * weights)) if len(losses) else math.nan}
    metrics[VAL_IMAGE_AUC] = binary_metrics(labels, probs)["auc"]
    studies = aggregate_studies(images)
    metrics.update(study_metrics(studies, prefix="val"))
    return metrics, images, studies
