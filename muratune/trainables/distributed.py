"""Data-parallel trials: a Ray Train TorchTrainer started inside the Tune function when workers_per_trial > 1."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from muratune.config import ExperimentConfig


class TrainWorkerHooks:
    """What ``train_trial`` needs to run as one Ray Train worker: the worker's device, DDP and a sharded loader."""

    def device(self) -> torch.device:
        """The device Ray Train assigned to this worker (its GPU, or the CPU)."""
        import ray.train.torch

        return ray.train.torch.get_device()

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """DistributedDataParallel around the model (gloo on the CPU, NCCL on GPUs)."""
        import ray.train.torch

        return ray.train.torch.prepare_model(model, move_to_device=False)

    def wrap_loader(self, loader):
        """Shard the training loader across workers with a DistributedSampler."""
        import ray.train.torch

        return ray.train.torch.prepare_data_loader(loader, move_to_device=False)


class TrainWorkerReporter:
    """Reports each epoch through ``ray.train.report``; rank 0 attaches the checkpoint."""

    def __init__(self) -> None:
        self._restored: tempfile.TemporaryDirectory | None = None

    def restore_dir(self) -> Path | None:
        """The Train run's latest checkpoint, if it is being restored."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        self._restored = tempfile.TemporaryDirectory(prefix="muratune-restore-")
        return Path(checkpoint.to_directory(self._restored.name))

    def report(self, metrics: dict, checkpoint_dir: Path) -> None:
        """Every worker reports; only rank 0 uploads its checkpoint."""
        import ray.train

        rank = ray.train.get_context().get_world_rank()
        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if rank == 0 else None
        ray.train.report(metrics, checkpoint=checkpoint)


def _worker_loop(loop_config: dict) -> None:
    """Ray Train worker entry: the ordinary trial loop with DDP hooks."""
    from muratune.trainables.train import train_trial

    train_trial(loop_config["config"], TrainWorkerReporter(), loop_config["settings"], TrainWorkerHooks())


def ddp_tune_trainable(config: dict, settings: dict | None = None) -> None:
    """Tune function for data-parallel trials: starts a TorchTrainer whose metrics reach Tune via a callback.

    The Train run is named after the Tune trial and stored beside it, so a restarted trial's TorchTrainer
    finds the same run and resumes from its latest checkpoint.
    """
    import ray.train
    import ray.tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    resolved = ExperimentConfig.model_validate(settings)
    res = resolved.resources
    use_gpu = res.gpus_per_trial > 0
    per_worker = {"CPU": res.cpus_per_trial, **({"GPU": res.gpus_per_trial} if use_gpu else {})}
    context = ray.tune.get_context()
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"config": config, "settings": settings},
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.workers_per_trial, use_gpu=use_gpu, resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=f"ddp_{context.get_trial_id()}",
            storage_path=_train_storage(resolved),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()


def _train_storage(settings: ExperimentConfig) -> str:
    from muratune.search.tuner import trials_storage

    storage_path, name = trials_storage(settings)
    return f"{storage_path}/{name}_train"
