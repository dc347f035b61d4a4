"""Optimiser and learning-rate schedule of a trial (JSON-serialisable state, so checkpoints need no pickle)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def create_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (momentum 0.9) over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)


def cosine_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up, then cosine decay to zero at ``total_steps``."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class Schedule:
    """Learning-rate schedule: per-step cosine, divide-by-10 on a validation-loss plateau (MURA paper), or constant."""

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str, total_steps: int, warmup_steps: int) -> None:
        self.optimizer, self.kind = optimizer, kind
        self.total_steps, self.warmup_steps = total_steps, warmup_steps
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.step_count = 0
        self.plateau = (
            torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1, patience=1)
            if kind == "plateau"
            else None
        )
        self._apply()

    def _apply(self) -> None:
        if self.kind != "cosine":
            return
        factor = cosine_factor(self.step_count, self.total_steps, self.warmup_steps)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor

    def step_batch(self) -> None:
        """Advance after one optimiser step."""
        self.step_count += 1
        self._apply()

    def step_epoch(self, val_loss: float) -> None:
        """Advance after one epoch's validation."""
        if self.plateau is not None:
            self.plateau.step(val_loss)

    def state_dict(self) -> dict:
        """JSON-serialisable state."""
        state: dict[str, Any] = {"step_count": self.step_count, "base_lrs": self.base_lrs}
        if self.plateau is not None:
            state["plateau"] = {k: v for k, v in self.plateau.state_dict().items() if k != "_last_lr"}
        state["lrs"] = [group["lr"] for group in self.optimizer.param_groups]
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore from ``state_dict``."""
        self.step_count, self.base_lrs = state["step_count"], state["base_lrs"]
        if self.plateau is not None and "plateau" in state:
            plateau = dict(state["plateau"])
            for key in ("best", "mode_worse"):
                if isinstance(plateau.get(key), str):
                    plateau[key] = float(plateau[key])
            self.plateau.load_state_dict(plateau)
        for group, lr in zip(self.optimizer.param_groups, state["lrs"], strict=True):
            group["lr"] = lr
