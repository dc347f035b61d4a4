"""Data-parallel trials: a Ray Train TorchTrainer started inside the Tune function when workers_per_trial > 1."""

from __future__ import annotations

import torch

from muratune.config import ExperimentConfig
from muratune.layout import TRAIN_RUNS_DIR, trials_storage


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


def _worker_loop(loop_config: dict) -> None:
    """Ray Train worker entry: the ordinary trial loop with DDP hooks."""
    from muratune.trainables.reporters import TrainWorkerReporter
    from muratune.trainables.trial import train_trial

    train_trial(loop_config["hparams"], loop_config["experiment_config"], TrainWorkerReporter(), TrainWorkerHooks())


def ddp_tune_trainable(hparams: dict, experiment_config: dict | None = None, train_storage: str | None = None) -> None:
    """Tune function for data-parallel trials: starts a TorchTrainer whose metrics reach Tune via a callback.

    The Train run is named after the Tune trial and stored beside the trials (``train_storage``, default the
    search's ``<storage>/<name>/trials_train``), so a restarted trial's TorchTrainer finds the same run and resumes
    from its latest checkpoint.
    """
    import ray.train
    import ray.tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    config = ExperimentConfig.model_validate(experiment_config)
    res = config.resources
    use_gpu = res.gpus_per_trial > 0
    per_worker = {"CPU": res.cpus_per_trial, **({"GPU": res.gpus_per_trial} if use_gpu else {})}
    context = ray.tune.get_context()
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"hparams": hparams, "experiment_config": experiment_config},
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.workers_per_trial, use_gpu=use_gpu, resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=f"ddp_{context.get_trial_id()}",
            storage_path=train_storage or _train_storage(config),
            callbacks=[TuneReportCallback()],  # type: ignore[list-item]  # Ray's own bridge to Tune
        ),
    )
    trainer.fit()


def _train_storage(config: ExperimentConfig) -> str:
    """Where the Train runs of data-parallel trials are stored: beside the search's trials."""
    storage_path, _ = trials_storage(config)
    return f"{storage_path}/{TRAIN_RUNS_DIR}"
