"""Where a trial reports each epoch and restores from: Ray Tune, a Ray Train worker, or a local folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from muratune.constants import EPOCH, METRIC, TRAIN_LOSS, VAL_AUC, VAL_LOSS
from muratune.layout import CHECKPOINT_PREFIX
from muratune.trainables import checkpoint as ckpt


class Reporter(Protocol):
    """Where a trial reports: Ray Tune, or a local folder when run on its own."""

    def restore_dir(self) -> Path | None: ...

    def report(self, metrics: dict, checkpoint_dir: Path) -> None: ...


class CheckpointRestore:
    """Restores from a Ray checkpoint: downloads it (if remote) into a temporary folder that lives with the reporter."""

    def __init__(self) -> None:
        self._restored: tempfile.TemporaryDirectory | None = None

    def _local_copy(self, checkpoint: Any) -> Path | None:
        if checkpoint is None:
            return None
        self._restored = tempfile.TemporaryDirectory(prefix="muratune-restore-")
        return Path(checkpoint.to_directory(self._restored.name))


class TuneReporter(CheckpointRestore):
    """Reports through ``ray.tune.report`` with a checkpoint each epoch; resumes via ``ray.tune.get_checkpoint``."""

    def restore_dir(self) -> Path | None:
        """Download (if remote) and return the checkpoint to resume from, if any."""
        import ray.tune

        return self._local_copy(ray.tune.get_checkpoint())

    def report(self, metrics: dict, checkpoint_dir: Path) -> None:
        """Report one epoch; then drop optimizer state from older checkpoints on local storage."""
        import ray.tune

        ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(str(checkpoint_dir)))
        trial_dir = _persisted_trial_dir()
        if trial_dir is None:
            return
        checkpoints = sorted(trial_dir.glob(f"{CHECKPOINT_PREFIX}*"))
        if checkpoints:
            ckpt.strip_optimizer_state(trial_dir, keep=checkpoints[-1])


def _persisted_trial_dir() -> Path | None:
    """The trial folder where Tune persists checkpoints, when it is on a local (or NFS) file system; else None.

    ``get_trial_dir()`` is the worker's staging folder, not where checkpoints land, so this asks Ray's storage
    context (a developer API; best effort: on failure or remote storage the optimizer state is simply kept).
    """
    try:
        import pyarrow.fs
        from ray.train._internal.session import get_session

        storage = get_session().storage  # type: ignore[union-attr]  # no session: caught below
        if not isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem):
            return None
        path = Path(storage.trial_fs_path)
    except Exception:  # noqa: BLE001 - an internal API that may move; stripping is only an optimisation
        return None
    return path if path.is_dir() else None


class FolderReporter:
    """Prints metrics and writes checkpoints to ``out/checkpoint_NNNNNN`` (for ``muratune train``)."""

    def __init__(self, out: str | os.PathLike, resume: bool = False, echo: Callable[[str], None] = print) -> None:
        self.out = Path(out)
        self.resume = resume
        self.echo = echo
        self.history: list[dict] = []

    def restore_dir(self) -> Path | None:
        """The latest checkpoint in ``out`` when resuming."""
        found = sorted(self.out.glob(f"{CHECKPOINT_PREFIX}*")) if self.resume else []
        return found[-1] if found else None

    def report(self, metrics: dict, checkpoint_dir: Path) -> None:
        """Copy the checkpoint into ``out`` and print one line."""
        target = self.out / f"{CHECKPOINT_PREFIX}{int(metrics[EPOCH]):06d}"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(checkpoint_dir, target)
        ckpt.strip_optimizer_state(self.out, keep=target)
        self.history.append(metrics)
        self.echo(
            f"epoch {metrics[EPOCH]:>3}  train_loss {metrics[TRAIN_LOSS]:.4f}  val_loss {metrics[VAL_LOSS]:.4f}  "
            f"val_kappa {metrics[METRIC]:.3f}  val_auc {metrics[VAL_AUC]:.3f}  ({metrics['epoch_time_s']:.1f}s)"
        )


class TrainWorkerReporter(CheckpointRestore):
    """Reports each epoch of a data-parallel trial through ``ray.train.report``; rank 0 attaches the checkpoint."""

    def restore_dir(self) -> Path | None:
        """The Train run's latest checkpoint, if it is being restored."""
        import ray.train

        return self._local_copy(ray.train.get_checkpoint())

    def report(self, metrics: dict, checkpoint_dir: Path) -> None:
        """Every worker reports; only rank 0 uploads its checkpoint."""
        import ray.train

        rank = ray.train.get_context().get_world_rank()
        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if rank == 0 else None
        ray.train.report(metrics, checkpoint=checkpoint)
