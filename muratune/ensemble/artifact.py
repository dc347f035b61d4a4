"""Writing an ensemble folder: ``ensemble.json`` (through `muratune.schemas.EnsembleSpec`), member copies, files."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from muratune.ensemble.inputs import Candidate
from muratune.ensemble.predictor import file_sha256
from muratune.ensemble.select import Weights
from muratune.ensemble.trained import TrainedModel
from muratune.fileio import atomic_dir, write_json
from muratune.layout import ENSEMBLE_FILE, MEMBERS_DIR, MODEL_FILE, TRIAL_FILE
from muratune.schemas import DataConfig, EnsembleSpec, MemberEntry


@dataclass
class EnsembleArtifact:
    """An ensemble ready to write: its spec, the checkpoints of its members (in weight order), and extra files.

    Attributes:
        spec: the ``ensemble.json`` content.
        sources: the members' checkpoints, one per ``spec.members`` entry.
        files: extra file name -> writer(path), e.g. the test-split predictions.
    """

    spec: EnsembleSpec
    sources: list[Candidate]
    files: dict[str, Callable[[Path], None]] = field(default_factory=dict)


def used_members(weights: Weights) -> np.ndarray:
    """Indices of the candidates with a positive weight for some body part."""
    return np.flatnonzero(np.any(np.stack(list(weights.values())) > 0, axis=0))


def member_entries(members: Sequence[TrainedModel], sources: Sequence[Candidate]) -> list[MemberEntry]:
    """The ``members`` of ``ensemble.json``: each member's folder in the ensemble, model, input and checksum."""
    return [
        MemberEntry(
            name=member.name,
            path=f"{MEMBERS_DIR}/{member.name}",
            trial_id=source.trial_id,
            backbone=member.trial.get("backbone"),
            data_config=DataConfig.model_validate(member.data_config),
            sha256=file_sha256(source.checkpoint / MODEL_FILE),  # the copy is byte for byte the same
            source=str(source.checkpoint),
        )
        for member, source in zip(members, sources, strict=True)
    ]


def write_artifact(target: Path, artifact: EnsembleArtifact, overwrite: bool) -> None:
    """Write an ensemble folder atomically: ``ensemble.json``, ``members/<name>/`` copies and the extra files."""
    entries = artifact.spec.members
    with atomic_dir(target, overwrite=overwrite, kind="ensemble") as tmp:
        for entry, source in zip(entries, artifact.sources, strict=True):
            folder = tmp / entry.path
            folder.mkdir(parents=True)
            shutil.copy2(source.checkpoint / MODEL_FILE, folder / MODEL_FILE)
            shutil.copy2(source.checkpoint / TRIAL_FILE, folder / TRIAL_FILE)
        write_json(tmp / ENSEMBLE_FILE, artifact.spec.to_json())
        for name, writer in artifact.files.items():
            writer(tmp / name)
