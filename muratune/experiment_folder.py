"""Opening an experiment folder for the stages after the search: its resolved config, or one error if it is none."""

from __future__ import annotations

import os
from pathlib import Path

from muratune.config import ExperimentConfig, load_config
from muratune.errors import UserError
from muratune.layout import RESOLVED_CONFIG


def experiment_config_file(experiment: str | os.PathLike) -> Path:
    """The ``resolved_config.yaml`` of an experiment folder.

    Raises:
        UserError: the folder is not an experiment (it has no resolved config).
    """
    folder = Path(experiment)
    path = folder / RESOLVED_CONFIG
    if not path.is_file():
        raise UserError(f"{folder}: not a muratune experiment folder (no {RESOLVED_CONFIG}); give a search's folder")
    return path


def load_resolved_config(experiment: str | os.PathLike) -> ExperimentConfig:
    """The config an experiment folder was searched with, validated (see `experiment_config_file`)."""
    return load_config(experiment_config_file(experiment))
