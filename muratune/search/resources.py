"""What one trial asks of the cluster, and whether the cluster can ever give it."""

from __future__ import annotations

from collections.abc import Callable

from muratune.config import ExperimentConfig
from muratune.errors import UserError

# A data-parallel trial's Tune actor only drives its TorchTrainer, whose workers hold the real resources.
DDP_DRIVER_CPUS = 0.25


def trial_resources(config: ExperimentConfig, data_parallel: bool | None = None) -> dict:
    """Resources of one trial's Tune actor.

    A data-parallel trial's actor only drives a TorchTrainer, whose workers request their own resources
    (``cpus_per_trial`` and ``gpus_per_trial`` each), so the actor itself takes a small CPU share.
    ``data_parallel`` (default: ``workers_per_trial > 1``) also covers a TorchTrainer of one worker.
    """
    res = config.resources
    if not (res.workers_per_trial > 1 if data_parallel is None else data_parallel):
        return {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial}
    return {"cpu": DDP_DRIVER_CPUS, "gpu": 0}


def check_cluster_resources(
    config: ExperimentConfig, autoscaling: bool = False, echo: Callable[[str], None] = print
) -> None:
    """Refuse per-trial requests the cluster cannot satisfy (e.g. more GPUs per trial than it has).

    On an existing cluster (``autoscaling``) the autoscaler may still add nodes, so this only warns.
    """
    try:
        _check_resources(config)
    except UserError as err:
        if not autoscaling:
            raise
        echo(f"warning: {err}; waiting for the autoscaler to add nodes")


def _check_resources(config: ExperimentConfig) -> None:
    import ray

    total = ray.cluster_resources()
    res = config.resources
    need_gpus = res.gpus_per_trial * res.workers_per_trial
    if need_gpus > total.get("GPU", 0):
        raise UserError(
            f"resources.gpus_per_trial: {res.gpus_per_trial} GPU(s) per trial requested, "
            f"but the cluster has {total.get('GPU', 0):g}"
        )
    if res.cpus_per_trial > total.get("CPU", 0):
        raise UserError(
            f"resources.cpus_per_trial: {res.cpus_per_trial} CPU(s) per trial requested, "
            f"but the cluster has {total.get('CPU', 0):g}"
        )
    if res.workers_per_trial > 1:
        # Each data-parallel trial holds its driver and all its workers at once; trials that only partly fit
        # would wait on each other forever (WorkerGroupStartupTimeoutError), so all concurrent ones must fit.
        per_trial = DDP_DRIVER_CPUS + res.workers_per_trial * res.cpus_per_trial
        if res.max_concurrent_trials * per_trial > total.get("CPU", 0) + 1e-9:
            fit = int(total.get("CPU", 0) // per_trial)
            raise UserError(
                f"resources.max_concurrent_trials: {res.max_concurrent_trials} data-parallel trials need "
                f"{res.max_concurrent_trials * per_trial:g} CPUs but the cluster has {total.get('CPU', 0):g}; "
                f"use at most {fit}"
            )
