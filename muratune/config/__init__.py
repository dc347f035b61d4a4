"""Experiment configuration: pydantic models (extra keys forbidden), YAML loading and --set overrides."""

from muratune.config.loading import (
    apply_overrides,
    dump_config,
    load_config,
    parse_override,
    read_yaml,
    shipped_config_path,
    shipped_configs,
    validate_config,
)
from muratune.config.sections import (
    RUNG_METRICS,
    BudgetConfig,
    CheckpointSettings,
    DataConfig,
    DebugConfig,
    ExperimentConfig,
    FailureConfig,
    ModelConfig,
    OptunaConfig,
    ResourcesConfig,
    TrainConfig,
)
from muratune.config.space import HYPERPARAMETERS, OPTIMIZERS, SpaceConfig, SpaceEntry

__all__ = [
    "HYPERPARAMETERS",
    "OPTIMIZERS",
    "RUNG_METRICS",
    "BudgetConfig",
    "CheckpointSettings",
    "DataConfig",
    "DebugConfig",
    "ExperimentConfig",
    "FailureConfig",
    "ModelConfig",
    "OptunaConfig",
    "ResourcesConfig",
    "SpaceConfig",
    "SpaceEntry",
    "TrainConfig",
    "apply_overrides",
    "dump_config",
    "load_config",
    "parse_override",
    "read_yaml",
    "shipped_config_path",
    "shipped_configs",
    "validate_config",
]
