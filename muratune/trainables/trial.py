"""The trial: train one configuration, evaluate study-level metrics each epoch, report and checkpoint."""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from muratune import __version__
from muratune.config import HYPERPARAMETERS, ExperimentConfig
from muratune.constants import EPOCH, LEARNING_RATE, TRAIN_LOSS, TRAIN_STUDIES, VAL_LOSS
from muratune.data.dataset import Normalizer
from muratune.trainables import checkpoint as ckpt
from muratune.trainables.data import TrialData, create_loaders, prepare_data, sample_weights, study_weights
from muratune.trainables.loop import EpochContext, Runtime, evaluate, inject_fault, train_one_epoch
from muratune.trainables.optim import Schedule, create_optimizer
from muratune.trainables.reporters import Reporter, TuneReporter


def trial_inputs(hparams: dict, config: ExperimentConfig | dict) -> tuple[dict, ExperimentConfig]:
    """The trial's hyperparameters (typed: integer batch size and depth) and its validated experiment config."""
    if not isinstance(config, ExperimentConfig):
        config = ExperimentConfig.model_validate(config)
    typed = {name: hparams[name] for name in HYPERPARAMETERS}
    typed["batch_size"] = int(typed["batch_size"])
    if typed["finetune_depth"] != "all":
        typed["finetune_depth"] = int(typed["finetune_depth"])
    return typed, config


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def trial_record(hparams: dict, config: ExperimentConfig, normalizer: Normalizer, epoch: int, metrics: dict) -> dict:
    """The ``trial.json`` content: enough to rebuild and use the model anywhere."""
    return {
        "muratune_version": __version__,
        "backbone": hparams["backbone"],
        "hyperparameters": hparams,
        "data_config": {
            "image_size": config.data.image_size,
            "resize_mode": config.data.resize_mode,
            "in_chans": config.data.in_chans,
            "mean": normalizer.mean.flatten().div(255).tolist(),
            "std": normalizer.std.flatten().div(255).tolist(),
        },
        "model": config.model.model_dump(mode="json"),
        "epoch": epoch,
        "metrics": metrics,
        "experiment_config": config.model_dump(mode="json"),
    }


def create_trial_model(hparams: dict, config: ExperimentConfig, runtime: Runtime) -> nn.Module:
    """The trial's timm model on its device, in channels_last when the runtime uses it."""
    from muratune.trainables.models import create_model

    model = create_model(
        hparams["backbone"],
        pretrained=config.model.pretrained,
        weights_dir=config.model.weights_dir,
        in_chans=config.data.in_chans,
        drop_rate=config.model.drop_rate,
        finetune_depth=hparams["finetune_depth"],
    ).to(runtime.device)
    return model.to(memory_format=torch.channels_last) if runtime.channels_last else model


def create_epoch_context(
    model: nn.Module,
    data: TrialData,
    train_set: Any,
    train_loader: Any,
    hparams: dict,
    config: ExperimentConfig,
    runtime: Runtime,
    normalizer: Normalizer,
) -> EpochContext:
    """The optimiser, schedule and scaler of a trial around its model and training loader."""
    optimizer = create_optimizer(model, hparams["optimizer"], hparams["lr"], hparams["weight_decay"])
    steps = len(train_loader)
    if config.train.max_steps_per_epoch is not None:
        steps = min(steps, config.train.max_steps_per_epoch)
    total, warmup = config.budget.max_epochs * steps, config.train.warmup_epochs * steps
    schedule = Schedule(optimizer, config.train.schedule, total, warmup)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp_dtype == torch.float16)
    weights = study_weights(train_set, data.class_weights)
    return EpochContext(
        model,
        train_loader,
        optimizer,
        schedule,
        scaler,
        runtime,
        normalizer,
        lambda idx: weights[idx],
        config.train.grad_clip,
        steps,
    )


def plateau_signal(config: ExperimentConfig, train_loss: float, val_loss: float) -> float:
    """The loss a plateau schedule watches: the val loss in a search, the train loss in a refit's fold model.

    A fold model's val subset is its held-out fold, whose predictions are its out-of-fold predictions; letting that
    fold time the learning-rate drops would leak it into the model, so out-of-fold scores would be optimistic. A full
    model (``data.whole_train``) has no val subset, so it watches its train loss too.
    """
    return train_loss if config.data.folds is not None or config.data.whole_train else val_loss


def train_trial(
    hparams: dict, config: ExperimentConfig | dict, reporter: Reporter | None = None, parallel: Any = None
) -> dict:
    """Train one configuration for ``budget.max_epochs`` epochs, reporting and checkpointing every epoch.

    Args:
        hparams: the hyperparameters (``backbone, lr, batch_size, finetune_depth, augment_policy, weight_decay,
            optimizer``); other keys are ignored.
        config: the experiment config (an ExperimentConfig or its dict).
        reporter: where to report; default Ray Tune.
        parallel: data-parallel hooks (``device()``, ``wrap_model``, ``wrap_loader``) when this runs as one of
            several Ray Train workers; see ``muratune.trainables.distributed``.

    Returns:
        The last epoch's metrics.
    """
    reporter = reporter or TuneReporter()
    hparams, config = trial_inputs(hparams, config)
    seed_everything(config.train.seed)
    torch.set_num_threads(max(1, int(config.resources.cpus_per_trial)))
    runtime = Runtime.create(config, parallel.device() if parallel else None)
    model = create_trial_model(hparams, config, runtime)
    normalizer = Normalizer.from_model(model, config.data.in_chans)
    data = prepare_data(config)
    train_set, val_set, train_loader, val_loader = create_loaders(data, hparams, config)
    val_weights = sample_weights(val_set.frame, data.class_weights)
    ctx = create_epoch_context(model, data, train_set, train_loader, hparams, config, runtime, normalizer)
    start_epoch, history = _restore(reporter, model, ctx.optimizer, ctx.schedule)
    if parallel:  # DDP wraps after restore: it broadcasts rank 0's weights
        ctx.net, ctx.loader = parallel.wrap_model(model), parallel.wrap_loader(train_loader)
    metrics: dict = history[-1] if history else {}
    for epoch in range(start_epoch + 1, config.budget.max_epochs + 1):
        started = time.perf_counter()
        train_loss = train_one_epoch(ctx, inject_fault(config, hparams["backbone"], epoch))
        metrics, val_images, val_studies = evaluate(model, val_loader, val_set, runtime, normalizer, val_weights)
        ctx.schedule.step_epoch(plateau_signal(config, train_loss, metrics[VAL_LOSS]))
        metrics = {EPOCH: epoch, TRAIN_LOSS: train_loss, LEARNING_RATE: ctx.optimizer.param_groups[0]["lr"], **metrics}
        metrics[TRAIN_STUDIES] = float(len(train_set.studies))
        metrics["epoch_time_s"] = time.perf_counter() - started
        history.append(metrics)
        state = {"epoch": epoch, "schedule": ctx.schedule.state_dict(), "history": history}
        with tempfile.TemporaryDirectory(prefix="muratune-ckpt-") as tmp:
            record = trial_record(hparams, config, normalizer, epoch, metrics)
            ckpt.save_checkpoint(tmp, model, record, state, val_images, val_studies, ctx.optimizer)
            reporter.report(metrics, Path(tmp))
    return metrics


def _restore(
    reporter: Reporter, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule
) -> tuple[int, list[dict]]:
    """Resume model, optimizer and schedule from the reporter's checkpoint; return (epoch done, history)."""
    directory = reporter.restore_dir()
    if directory is None:
        return 0, []
    ckpt.load_weights(model, directory / ckpt.MODEL_FILE)
    if (directory / ckpt.OPTIMIZER_FILE).is_file():
        ckpt.load_optimizer(optimizer, directory)
    state = ckpt.read_json(directory / ckpt.STATE_FILE)
    schedule.load_state_dict(state["schedule"])
    return int(state["epoch"]), list(state.get("history", []))


def tune_trainable(hparams: dict, experiment_config: dict | None = None) -> None:
    """The Ray Tune function trainable (``experiment_config`` bound with ``tune.with_parameters``)."""
    if experiment_config is None:
        raise TypeError("tune_trainable needs experiment_config (bind it with tune.with_parameters)")
    train_trial(hparams, experiment_config, TuneReporter())
