"""The experiment config: data, model, training, space, budget, resources, searcher, failures, checkpoints."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from muratune.body_parts import normalise_body_part
from muratune.config.base import _Strict
from muratune.config.space import SpaceConfig

# Metrics ASHA can rank trials by at its rungs, with their direction.
RUNG_METRICS: dict[str, str] = {"val_auc": "max", "val_kappa": "max", "val_loss": "min"}


class DataConfig(_Strict):
    """Where the data is and how images are prepared."""

    root: str | None = None
    image_size: Annotated[int, Field(ge=16, le=2048)] = 224
    resize_mode: Literal["pad", "stretch"] = "pad"
    body_parts: list[str] | None = None
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1
    split_seed: int = 0
    cache_dir: str | None = None
    skip_bad_images: bool = False
    in_chans: Literal[1, 3] = 1
    num_workers: Annotated[int, Field(ge=0)] = 2

    @field_validator("body_parts")
    @classmethod
    def _known_parts(cls, parts: list[str] | None) -> list[str] | None:
        if parts is None:
            return None
        if not parts:
            raise ValueError("must list at least one body part, or be null for all")
        return [normalise_body_part(part) for part in parts]


class ModelConfig(_Strict):
    """Backbone construction settings that are not searched."""

    pretrained: bool = False
    weights_dir: str | None = None
    drop_rate: Annotated[float, Field(ge=0, lt=1)] = 0.0


class TrainConfig(_Strict):
    """Training-loop settings that are not searched."""

    schedule: Literal["cosine", "plateau", "constant"] = "cosine"
    warmup_epochs: Annotated[int, Field(ge=0)] = 0
    grad_clip: Annotated[float, Field(ge=0)] = 1.0
    seed: int = 0
    amp: bool = True
    channels_last: bool = True
    eval_batch_size: Annotated[int, Field(ge=1)] = 128
    max_steps_per_epoch: Annotated[int, Field(ge=1)] | None = None


class BudgetConfig(_Strict):
    """How much search to do, and ASHA's settings."""

    num_samples: Annotated[int, Field(ge=1)] = 8
    max_epochs: Annotated[int, Field(ge=1)] = 10
    grace_period: Annotated[int, Field(ge=1)] = 2
    reduction_factor: Annotated[float, Field(gt=1)] = 3
    time_budget_s: Annotated[float, Field(gt=0)] | None = None
    scheduler: Literal["asha", "none"] = "asha"
    # What ASHA ranks trials by at its rungs. Study AUC by default: before a trial's probabilities cross the 0.5
    # threshold its kappa is 0 whatever it has learnt, so early-rung kappa ranks poorly (docs/performance.md).
    # Optuna still optimises val_kappa.
    rung_metric: Literal["val_auc", "val_kappa", "val_loss"] = "val_auc"

    @model_validator(mode="after")
    def _grace_within_budget(self) -> BudgetConfig:
        if self.max_epochs < self.grace_period:
            raise ValueError(f"max_epochs ({self.max_epochs}) must be >= grace_period ({self.grace_period}) for ASHA")
        return self


class ResourcesConfig(_Strict):
    """Per-trial resources and concurrency."""

    cpus_per_trial: Annotated[float, Field(gt=0)] = 2
    gpus_per_trial: Annotated[float, Field(ge=0)] = 0
    max_concurrent_trials: Annotated[int, Field(ge=1)] = 1
    workers_per_trial: Annotated[int, Field(ge=1)] = 1

    @field_validator("gpus_per_trial")
    @classmethod
    def _fraction_or_whole(cls, gpus: float) -> float:
        if gpus > 1 and gpus != int(gpus):
            raise ValueError(f"must be a fraction <= 1 or a whole number (got {gpus})")
        return gpus


class OptunaConfig(_Strict):
    """The searcher: Optuna's sampler and where its study is stored."""

    sampler: Literal["tpe", "random"] = "tpe"
    seed: int | None = 0
    storage: str | None = None
    n_startup_trials: Annotated[int, Field(ge=0)] = 4
    prune_stopped_trials: bool = True


class FailureConfig(_Strict):
    """How failing trials are retried."""

    max_failures: Annotated[int, Field(ge=0)] = 1


class CheckpointSettings(_Strict):
    """Which checkpoints are kept."""

    num_to_keep: Annotated[int, Field(ge=1)] = 2


class DebugConfig(_Strict):
    """Fault injection for testing failure handling: make matching trials fail on purpose."""

    fault: Literal["nan", "oom", "crash"] | None = None
    fault_epoch: Annotated[int, Field(ge=1)] = 1
    fault_backbone: str | None = None


class ExperimentConfig(_Strict):
    """A whole experiment: data, model, training, search space, budget, resources and storage."""

    name: str = "experiment"
    storage: str = "runs"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    space: SpaceConfig = Field(default_factory=SpaceConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    optuna: OptunaConfig = Field(default_factory=OptunaConfig)
    failure: FailureConfig = Field(default_factory=FailureConfig)
    checkpoint: CheckpointSettings = Field(default_factory=CheckpointSettings)
    debug: DebugConfig = Field(default_factory=DebugConfig)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise ValueError(f"must be a plain folder name (got {name!r})")
        return name
