"""The searched hyperparameters: one entry per name, a fixed value or a choice or range (YAML space syntax)."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, model_validator

from muratune.config.base import _Strict

HYPERPARAMETERS = ("backbone", "lr", "batch_size", "finetune_depth", "augment_policy", "weight_decay", "optimizer")
OPTIMIZERS = ("adam", "adamw", "sgd")


class SpaceEntry(_Strict):
    """One searched hyperparameter: a categorical choice or a numeric range."""

    type: Literal["choice", "loguniform", "uniform", "int", "fixed"]
    values: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    value: Any = None

    @model_validator(mode="after")
    def _check_shape(self) -> SpaceEntry:
        if self.type == "choice":
            if not self.values:
                raise ValueError("a choice needs a non-empty 'values' list")
            return self
        if self.type == "fixed":
            if self.value is None:
                raise ValueError("a fixed entry needs a 'value'")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} range needs 'low' and 'high'")
        if not self.low < self.high:
            raise ValueError(f"'low' ({self.low}) must be below 'high' ({self.high})")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"a loguniform range needs 'low' > 0 (got {self.low})")
        return self

    def candidate_values(self) -> list[Any]:
        """Values this entry can take, for checks: the choices, the fixed value, or the bounds."""
        if self.type == "choice":
            return list(self.values or [])
        if self.type == "fixed":
            return [self.value]
        return [self.low, self.high]

    def default(self) -> Any:
        """A representative value: the first choice, the fixed value, or the (geometric) middle of the range."""
        if self.type == "choice":
            return self.values[0]  # type: ignore[index]
        if self.type == "fixed":
            return self.value
        if self.type == "loguniform":
            return math.sqrt(self.low * self.high)  # type: ignore[operator]
        middle = (self.low + self.high) / 2  # type: ignore[operator]
        return round(middle) if self.type == "int" else middle


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fixed(value: Any) -> SpaceEntry:
    return SpaceEntry(type="fixed", value=value)


class SpaceConfig(_Strict):
    """The searched hyperparameters; a plain scalar in YAML means a fixed value."""

    backbone: SpaceEntry = Field(default_factory=lambda: SpaceEntry(type="choice", values=["resnet10t"]))
    lr: SpaceEntry = Field(default_factory=lambda: SpaceEntry(type="loguniform", low=1e-4, high=3e-3))
    batch_size: SpaceEntry = Field(default_factory=lambda: _fixed(32))
    finetune_depth: SpaceEntry = Field(default_factory=lambda: _fixed("all"))
    augment_policy: SpaceEntry = Field(default_factory=lambda: _fixed("flip"))
    weight_decay: SpaceEntry = Field(default_factory=lambda: _fixed(1e-5))
    optimizer: SpaceEntry = Field(default_factory=lambda: _fixed("adamw"))

    @model_validator(mode="before")
    @classmethod
    def _scalars_are_fixed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {
                k: v if isinstance(v, dict | SpaceEntry) else {"type": "fixed", "value": v} for k, v in data.items()
            }
        return data

    @model_validator(mode="after")
    def _check_values(self) -> SpaceConfig:
        for value in self.lr.candidate_values():
            if not _is_number(value) or value <= 0:
                raise ValueError(f"lr: learning rates must be positive numbers (got {value!r})")
        for value in self.weight_decay.candidate_values():
            if not _is_number(value) or value < 0:
                raise ValueError(f"weight_decay: must be a number >= 0 (got {value!r})")
        for value in self.batch_size.candidate_values():
            if not _is_number(value) or value < 1 or value != int(value):
                raise ValueError(f"batch_size: must be a positive integer (got {value!r})")
        for value in self.optimizer.candidate_values():
            if value not in OPTIMIZERS:
                raise ValueError(f"optimizer: unknown optimizer {value!r}; choose from {', '.join(OPTIMIZERS)}")
        for value in self.finetune_depth.candidate_values():
            if not (value == "all" or (_is_number(value) and value == int(value) and value >= 0)):
                raise ValueError(f"finetune_depth: must be 'all' or an integer >= 0 (got {value!r})")
        for name in ("backbone", "augment_policy"):
            entry = getattr(self, name)
            if entry.type not in ("choice", "fixed"):
                raise ValueError(f"{name}: must be a choice or a fixed value, not a {entry.type} range")
        return self

    def searched(self) -> list[str]:
        """Names of the hyperparameters that are actually searched (not fixed)."""
        return [name for name, entry in self.entries().items() if entry.type != "fixed"]

    def entries(self) -> dict[str, SpaceEntry]:
        """Return the hyperparameters by name."""
        return {name: getattr(self, name) for name in HYPERPARAMETERS}

    def defaults(self) -> dict[str, Any]:
        """Return one representative point of the space (used by `muratune train`)."""
        return {name: entry.default() for name, entry in self.entries().items()}
