"""The trial: train one configuration, evaluate study-level metrics each epoch, report and checkpoint."""

from __future__ import annotations

import math
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn

from muratune import __version__
from muratune.config import HYPERPARAMETERS, ExperimentConfig
from muratune.constants import BODY_PART, EPOCH, LABEL, METRIC, SUBSET_TRAIN, SUBSET_VAL, TRAIN_LOSS, VAL_LOSS
from muratune.data.cache import ImageCache
from muratune.trainables import checkpoint as ckpt
from muratune.trainables.metrics import PROB, aggregate_studies, binary_metrics, study_metrics

SETTINGS_KEY = "settings"


class TrialFailed(RuntimeError):
    """A trial that cannot go on (non-finite loss, injected fault); Tune records it as failed with this reason."""


# ------------------------------------------------------------------------------------------------- data
@dataclass
class TrialData:
    """Everything a trial reads: the cache and the internal train/val frames with per-image loss weights."""

    cache: ImageCache
    train: pd.DataFrame
    val: pd.DataFrame
    class_weights: dict[str, tuple[float, float]]


def class_weights_by_part(frame: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """MURA paper weights per body part T: ``w_T,0 = |A_T| / (|A_T|+|N_T|)``, ``w_T,1 = |N_T| / (|A_T|+|N_T|)``."""
    weights = {}
    for part, labels in frame.groupby(BODY_PART)[LABEL]:
        abnormal = int(labels.sum())
        total = len(labels)
        if abnormal == 0 or abnormal == total:
            weights[str(part)] = (0.5, 0.5)
        else:
            weights[str(part)] = (abnormal / total, (total - abnormal) / total)
    return weights


def prepare_data(settings: ExperimentConfig) -> TrialData:
    """Index the dataset, split it (internally, or into folds with ``data.folds``), open (or build) the shared cache.

    With ``data.folds`` and ``data.fold`` set the trial trains on the other folds of the official train split and
    validates on fold ``data.fold``, so its val predictions are out-of-fold predictions (see ``muratune refit``).
    """
    from muratune.data.cache import build_cache
    from muratune.data.index import load_index
    from muratune.data.split import fold_split, internal_split

    data = settings.data
    if not data.root:
        from muratune.errors import UserError

        raise UserError("data.root: no dataset given; set it in the config or pass --data ROOT")
    index = load_index(data.root)
    cache = build_cache(
        index,
        data.image_size,
        data.resize_mode,
        cache_dir=data.cache_dir,
        skip_bad_images=data.skip_bad_images,
        progress=False,
    )
    if data.folds is not None and data.fold is not None:
        frame = fold_split(index, data.folds, data.fold, data.split_seed)
    else:
        frame = internal_split(index, data.val_fraction, data.split_seed)
    if data.body_parts:
        frame = frame[frame[BODY_PART].isin(data.body_parts)]
    train = frame[frame["subset"] == SUBSET_TRAIN].reset_index(drop=True)
    val = frame[frame["subset"] == SUBSET_VAL].reset_index(drop=True)
    return TrialData(cache=cache, train=train, val=val, class_weights=class_weights_by_part(train))


def sample_weights(frame: pd.DataFrame, weights: dict[str, tuple[float, float]]) -> np.ndarray:
    """Per-image loss weights from the body part and label."""
    return np.array(
        [weights.get(part, (0.5, 0.5))[int(label)] for part, label in zip(frame[BODY_PART], frame[LABEL], strict=True)],
        dtype=np.float32,
    )


def study_weights(dataset, weights: dict[str, tuple[float, float]]) -> torch.Tensor:
    """Loss weights indexed by the dataset's study index (what its loader yields), not by image position.

    Every view of a study shares its body part and label, so one weight per study is exact.
    """
    out = np.zeros(len(dataset.studies), dtype=np.float32)
    out[dataset.study_index] = sample_weights(dataset.frame, weights)
    return torch.from_numpy(out)


# ------------------------------------------------------------------------------------------------- optim
def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (momentum 0.9) over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)


def cosine_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up, then cosine decay to zero at ``total_steps``."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class Schedule:
    """Learning-rate schedule: per-step cosine, divide-by-10 on a validation-loss plateau (MURA paper), or constant."""

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str, total_steps: int, warmup_steps: int) -> None:
        self.optimizer, self.kind = optimizer, kind
        self.total_steps, self.warmup_steps = total_steps, warmup_steps
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.step_count = 0
        self.plateau = (
            torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1, patience=1)
            if kind == "plateau"
            else None
        )
        self._apply()

    def _apply(self) -> None:
        if self.kind != "cosine":
            return
        factor = cosine_factor(self.step_count, self.total_steps, self.warmup_steps)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor

    def step_batch(self) -> None:
        """Advance after one optimiser step."""
        self.step_count += 1
        self._apply()

    def step_epoch(self, val_loss: float) -> None:
        """Advance after one epoch's validation."""
        if self.plateau is not None:
            self.plateau.step(val_loss)

    def state_dict(self) -> dict:
        """JSON-serialisable state."""
        state: dict[str, Any] = {"step_count": self.step_count, "base_lrs": self.base_lrs}
        if self.plateau is not None:
            state["plateau"] = {k: v for k, v in self.plateau.state_dict().items() if k != "_last_lr"}
        state["lrs"] = [group["lr"] for group in self.optimizer.param_groups]
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore from ``state_dict``."""
        self.step_count, self.base_lrs = state["step_count"], state["base_lrs"]
        if self.plateau is not None and "plateau" in state:
            plateau = dict(state["plateau"])
            for key in ("best", "mode_worse"):
                if isinstance(plateau.get(key), str):
                    plateau[key] = float(plateau[key])
            self.plateau.load_state_dict(plateau)
        for group, lr in zip(self.optimizer.param_groups, state["lrs"], strict=True):
            group["lr"] = lr


# ------------------------------------------------------------------------------------------------- loops
@dataclass
class Runtime:
    """Device and precision settings for one trial."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool

    @classmethod
    def create(cls, settings: ExperimentConfig, device: torch.device | None = None) -> Runtime:
        """CUDA with AMP (bf16 where supported, else fp16); fp32 on the CPU. channels_last on CUDA and the CPU.

        channels_last also pays on the CPU (oneDNN): resnet10t/14t at 64 px trained 1.13-1.22x faster here.
        MPS keeps the default layout.
        """
        from muratune.trainables.models import select_device

        device = device or select_device(prefer_gpu=settings.resources.gpus_per_trial > 0)
        amp_dtype = None
        if device.type == "cuda" and settings.train.amp:
            amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return cls(device, amp_dtype, settings.train.channels_last and device.type in ("cuda", "cpu"))

    def autocast(self):
        """Autocast context for the forward pass (a no-op on the CPU)."""
        if self.amp_dtype is None:
            return torch.autocast(device_type="cpu", enabled=False)
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def to_input(self, images: torch.Tensor, normalizer) -> torch.Tensor:
        """Move a uint8 batch to the device, then normalise there (less host work and transfer)."""
        images = images.to(self.device, non_blocking=True)
        batch = normalizer(images)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch


def weighted_bce(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The MURA paper's weighted binary cross-entropy (mean over the batch)."""
    losses = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")
    return (losses * weights).mean()


def inject_fault(settings: ExperimentConfig, backbone: str, epoch: int) -> float | None:
    """Return NaN or raise, if the debug config asks this trial to fail at this epoch (testing only)."""
    debug = settings.debug
    if debug.fault is None or epoch != debug.fault_epoch:
        return None
    if debug.fault_backbone is not None and debug.fault_backbone != backbone:
        return None
    if debug.fault == "oom":
        raise torch.OutOfMemoryError("CUDA out of memory (injected by debug.fault=oom)")
    if debug.fault == "crash":
        raise RuntimeError("trial crashed (injected by debug.fault=crash)")
    return math.nan


def train_one_epoch(
    model, loader, optimizer, schedule, scaler, runtime, normalizer, weights_of, clip, fault, max_steps=None
):
    """One pass over the training loader (at most ``max_steps`` batches); returns the mean loss.

    ``weights_of`` maps the loader's third item (study indices) to per-sample loss weights. Raises TrialFailed
    on a non-finite loss.
    """
    from muratune.trainables.models import freeze_frozen_batchnorm

    model.train()
    freeze_frozen_batchnorm(model)
    total, count = 0.0, 0
    for step, (images, labels, indices) in enumerate(loader):
        if max_steps is not None and step >= max_steps:
            break
        batch = runtime.to_input(images, normalizer)
        labels = labels.to(runtime.device)
        weights = weights_of(indices).to(runtime.device)
        with runtime.autocast():
            logits = model(batch).squeeze(1)
        loss = weighted_bce(logits, labels, weights)
        if fault is not None and step == 0:
            loss = loss * fault
        if not torch.isfinite(loss):
            raise TrialFailed(f"loss became {loss.item()} at step {step} (lr={optimizer.param_groups[0]['lr']:.3g})")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        scaler.step(optimizer)
        scaler.update()
        schedule.step_batch()
        total += loss.item() * len(labels)
        count += len(labels)
    return total / max(count, 1)


@torch.no_grad()
def predict_probs(model, loader, runtime, normalizer) -> np.ndarray:
    """Image probabilities for every sample of ``loader``, in order."""
    model.eval()
    probs = []
    for images, _, _ in loader:
        with runtime.autocast():
            logits = model(runtime.to_input(images, normalizer)).squeeze(1)
        probs.append(torch.sigmoid(logits.float()).cpu().numpy())
    return np.concatenate(probs) if probs else np.zeros(0, dtype=np.float32)


def evaluate(
    model, loader, dataset, runtime, normalizer, weights: np.ndarray
) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """Image-level loss and AUC plus study-level metrics on the internal validation split."""
    probs = predict_probs(model, loader, runtime, normalizer)
    images = dataset.frame[["image_path", "study_path", "patient_id", BODY_PART, LABEL, "view"]].copy()
    images[PROB] = probs
    labels = images[LABEL].to_numpy(dtype=np.float32)
    clipped = np.clip(probs, 1e-7, 1 - 1e-7)
    losses = -(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))
    metrics = {VAL_LOSS: float(np.mean(losses * weights)) if len(losses) else math.nan}
    metrics["val_image_auc"] = binary_metrics(labels, probs)["auc"]
    studies = aggregate_studies(images)
    metrics.update(study_metrics(studies, prefix="val"))
    return metrics, images, studies


# ------------------------------------------------------------------------------------------------- report
class Reporter(Protocol):
    """Where a trial reports: Ray Tune, or a local folder when run on its own."""

    def restore_dir(self) -> Path | None: ...

    def report(self, metrics: dict, checkpoint_dir: Path) -> None: ...


class TuneReporter:
    """Reports through ``ray.tune.report`` with a checkpoint each epoch; resumes via ``ray.tune.get_checkpoint``."""

    def __init__(self) -> None:
        self._restored: tempfile.TemporaryDirectory | None = None

    def restore_dir(self) -> Path | None:
        """Download (if remote) and return the checkpoint to resume from, if any."""
        import ray.tune

        checkpoint = ray.tune.get_checkpoint()
        if checkpoint is None:
            return None
        self._restored = tempfile.TemporaryDirectory(prefix="muratune-restore-")
        return Path(checkpoint.to_directory(self._restored.name))

    def report(self, metrics: dict, checkpoint_dir: Path) -> None:
        """Report one epoch; then drop optimizer state from older checkpoints on local storage."""
        import ray.tune

        ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(str(checkpoint_dir)))
        trial_dir = _persisted_trial_dir()
        checkpoints = sorted(trial_dir.glob("checkpoint_*")) if trial_dir is not None else []
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

        storage = get_session().storage
        if not isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem):
            return None
        path = Path(storage.trial_fs_path)
    except Exception:  # noqa: BLE001 - an internal API that may move; stripping is only an optimisation
        return None
    return path if path.is_dir() else None


class FolderReporter:
    """Prints metrics and writes checkpoints to ``out/checkpoint_NNNNNN`` (for ``muratune train``)."""

    def __init__(self, out: str | os.PathLike, resume: bool = False, echo=print) -> None:
        self.out = Path(out)
        self.resume = resume
        self.echo = echo
        self.history: list[dict] = []

    def restore_dir(self) -> Path | None:
        """The latest checkpoint in ``out`` when resuming."""
        found = sorted(self.out.glob("checkpoint_*")) if self.resume else []
        return found[-1] if found else None

    def report(self, metrics: dict, checkpoint_dir: Path) -> None:
        """Copy the checkpoint into ``out`` and print one line."""
        import shutil

        target = self.out / f"checkpoint_{int(metrics[EPOCH]):06d}"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(checkpoint_dir, target)
        ckpt.strip_optimizer_state(self.out, keep=target)
        self.history.append(metrics)
        self.echo(
            f"epoch {metrics[EPOCH]:>3}  train_loss {metrics[TRAIN_LOSS]:.4f}  val_loss {metrics[VAL_LOSS]:.4f}  "
            f"val_kappa {metrics[METRIC]:.3f}  val_auc {metrics['val_auc']:.3f}  ({metrics['epoch_time_s']:.1f}s)"
        )


# ------------------------------------------------------------------------------------------------- trial
def split_config(config: dict, settings: ExperimentConfig | dict | None = None) -> tuple[dict, ExperimentConfig]:
    """Separate a trial config into its hyperparameters and the experiment settings.

    The settings come from ``settings`` (how Tune passes them, via ``tune.with_parameters``) or, when run on
    its own, from ``config["settings"]``.
    """
    settings = settings if settings is not None else config[SETTINGS_KEY]
    if not isinstance(settings, ExperimentConfig):
        settings = ExperimentConfig.model_validate(settings)
    hparams = {name: config[name] for name in HYPERPARAMETERS}
    hparams["batch_size"] = int(hparams["batch_size"])
    if hparams["finetune_depth"] != "all":
        hparams["finetune_depth"] = int(hparams["finetune_depth"])
    return hparams, settings


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _loaders(data: TrialData, hparams: dict, settings: ExperimentConfig, normalizer):
    from muratune.data.augment import create_transform
    from muratune.data.dataset import CachedImageDataset, make_loader

    seed = settings.train.seed
    # Seeded: with num_workers 0 no worker_init_fn reseeds the pipeline, and albumentations would draw from OS entropy.
    transform = create_transform(hparams["augment_policy"], settings.data.image_size, seed=seed)
    train_set = CachedImageDataset(data.cache, data.train, transform=transform)
    val_set = CachedImageDataset(data.cache, data.val)
    workers = settings.data.num_workers
    drop_last = len(train_set) > hparams["batch_size"]
    train_loader = make_loader(train_set, hparams["batch_size"], True, workers, seed, drop_last=drop_last)
    val_loader = make_loader(val_set, settings.train.eval_batch_size, False, workers, seed)
    return train_set, val_set, train_loader, val_loader


def trial_record(hparams: dict, settings: ExperimentConfig, normalizer, epoch: int, metrics: dict) -> dict:
    """The ``trial.json`` content: enough to rebuild and use the model anywhere."""
    return {
        "muratune_version": __version__,
        "backbone": hparams["backbone"],
        "hyperparameters": hparams,
        "data_config": {
            "image_size": settings.data.image_size,
            "resize_mode": settings.data.resize_mode,
            "in_chans": settings.data.in_chans,
            "mean": normalizer.mean.flatten().div(255).tolist(),
            "std": normalizer.std.flatten().div(255).tolist(),
        },
        "model": settings.model.model_dump(mode="json"),
        "epoch": epoch,
        "metrics": metrics,
        "settings": settings.model_dump(mode="json"),
    }


def train_trial(
    config: dict,
    reporter: Reporter | None = None,
    settings: ExperimentConfig | dict | None = None,
    parallel: Any = None,
) -> dict:
    """Train one configuration for ``budget.max_epochs`` epochs, reporting every epoch.

    Args:
        config: the hyperparameters (``backbone, lr, batch_size, finetune_depth, augment_policy, weight_decay,
            optimizer``) plus ``settings``: the experiment config (an ExperimentConfig or its dict).
        reporter: where to report; default Ray Tune.
        settings: the experiment config, when not given inside ``config``.
        parallel: data-parallel hooks (``device()``, ``wrap_model``, ``wrap_loader``) when this runs as one of
            several Ray Train workers; see ``muratune.trainables.distributed``.

    Returns:
        The last epoch's metrics.
    """
    from muratune.data.dataset import Normalizer
    from muratune.trainables.models import create_model

    reporter = reporter or TuneReporter()
    hparams, settings = split_config(config, settings)
    seed_everything(settings.train.seed)
    torch.set_num_threads(max(1, int(settings.resources.cpus_per_trial)))
    runtime = Runtime.create(settings, parallel.device() if parallel else None)
    model = create_model(
        hparams["backbone"],
        pretrained=settings.model.pretrained,
        weights_dir=settings.model.weights_dir,
        in_chans=settings.data.in_chans,
        drop_rate=settings.model.drop_rate,
        finetune_depth=hparams["finetune_depth"],
    ).to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    normalizer = Normalizer.from_model(model, settings.data.in_chans)
    data = prepare_data(settings)
    train_set, val_set, train_loader, val_loader = _loaders(data, hparams, settings, normalizer)
    train_weights = study_weights(train_set, data.class_weights)
    val_weights = sample_weights(val_set.frame, data.class_weights)
    optimizer = build_optimizer(model, hparams["optimizer"], hparams["lr"], hparams["weight_decay"])
    max_epochs = settings.budget.max_epochs
    steps = len(train_loader)
    if settings.train.max_steps_per_epoch is not None:
        steps = min(steps, settings.train.max_steps_per_epoch)
    schedule = Schedule(optimizer, settings.train.schedule, max_epochs * steps, settings.train.warmup_epochs * steps)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp_dtype == torch.float16)
    start_epoch, history = _restore(reporter, model, optimizer, schedule)
    net = parallel.wrap_model(model) if parallel else model  # DDP wraps after restore: it broadcasts rank 0
    if parallel:
        train_loader = parallel.wrap_loader(train_loader)

    metrics: dict = history[-1] if history else {}
    for epoch in range(start_epoch + 1, max_epochs + 1):
        started = time.perf_counter()
        fault = inject_fault(settings, hparams["backbone"], epoch)
        train_loss = train_one_epoch(
            net, train_loader, optimizer, schedule, scaler, runtime, normalizer,
            lambda idx: train_weights[idx], settings.train.grad_clip, fault, steps,
        )  # fmt: skip
        metrics, val_images, val_studies = evaluate(model, val_loader, val_set, runtime, normalizer, val_weights)
        schedule.step_epoch(metrics[VAL_LOSS])
        metrics = {EPOCH: epoch, TRAIN_LOSS: train_loss, "lr": optimizer.param_groups[0]["lr"], **metrics}
        metrics["epoch_time_s"] = time.perf_counter() - started
        history.append(metrics)
        with tempfile.TemporaryDirectory(prefix="muratune-ckpt-") as tmp:
            ckpt.save_checkpoint(
                tmp, model, trial_record(hparams, settings, normalizer, epoch, metrics),
                {"epoch": epoch, "schedule": schedule.state_dict(), "history": history},
                val_images, val_studies, optimizer,
            )  # fmt: skip
            reporter.report(metrics, Path(tmp))
    return metrics


def _restore(reporter: Reporter, model, optimizer, schedule) -> tuple[int, list[dict]]:
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


def tune_trainable(config: dict, settings: dict | None = None) -> None:
    """The Ray Tune function trainable (``settings`` bound with ``tune.with_parameters``)."""
    train_trial(config, TuneReporter(), settings)
