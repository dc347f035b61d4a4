"""The doctor's measurements, each run inside a Ray task on a cluster node: CUDA, storage, loader, training, CAM."""

from __future__ import annotations

import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import torch

from muratune.config import ExperimentConfig

PROBE_DIR = "probe_checkpoint"


# ------------------------------------------------------------------------------------------------ node facts
def node_facts() -> dict[str, Any]:
    """This node's host name, torch and CUDA versions, and every CUDA device torch sees, with bf16 support."""
    facts: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "devices": [],
        "bf16": False,
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            facts["devices"].append(
                {
                    "name": props.name,
                    "memory_gib": round(props.total_memory / 2**30, 1),
                    "capability": f"{props.major}.{props.minor}",
                }
            )
        facts["bf16"] = bool(torch.cuda.is_bf16_supported())
    return facts


def write_storage_marker(storage: str, token: str) -> dict[str, str]:
    """Write ``<storage>/<node id>.txt`` holding ``token`` (any pyarrow file system: local, NFS, s3://, gs://)."""
    import pyarrow.fs
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    fs, path = pyarrow.fs.FileSystem.from_uri(storage)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{node_id}.txt") as stream:
        stream.write(f"{token} {node_id}".encode())
    return {"node_id": node_id, "hostname": socket.gethostname()}


def read_storage_marker(storage: str, node_id: str) -> str | None:
    """The text a node wrote with ``write_storage_marker``, or None when the driver cannot see it."""
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(storage)
    try:
        with fs.open_input_stream(f"{path}/{node_id}.txt") as stream:
            return stream.read().decode()
    except (FileNotFoundError, OSError):
        return None


def make_synthetic(root: str, studies: int, long_side: int) -> dict[str, Any]:
    """Draw the doctor's synthetic dataset into ``root`` on this node (the same files on every node), once."""
    from filelock import FileLock

    from muratune.data.index import load_index
    from muratune.data.synth import generate_dataset

    Path(root).mkdir(parents=True, exist_ok=True)
    with FileLock(f"{root}.lock"):
        if not (Path(root) / "MURA-v1.1").is_dir():
            generate_dataset(root, studies=studies, seed=0, difficulty="easy", long_side=long_side, workers=1)
    return {"hostname": socket.gethostname(), "images": len(load_index(root))}


def write_files(directory: str, files: dict[str, bytes]) -> str:
    """Write ``files`` (name to content) into ``directory`` on this node; returns the host name."""
    from muratune.fileio import write_bytes

    for name, content in files.items():
        write_bytes(Path(directory) / name, content)
    return socket.gethostname()


def remove_folder(path: str) -> str:
    """Remove the doctor's scratch folder (and its lock file) on this node; returns the host name."""
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    for lock in Path(path).parent.glob(f"{Path(path).name}*.lock"):
        lock.unlink(missing_ok=True)
    return socket.gethostname()


def pick_study(root: str) -> tuple[str, list[tuple[str, bytes]]]:
    """A study of the test split (abnormal first) and its views' bytes, for the CAM and serve checks."""
    from muratune.constants import LABEL, STUDY_PATH
    from muratune.data.index import load_index

    index = load_index(root)
    valid = index[index["split"] == "valid"].sort_values([LABEL, STUDY_PATH], ascending=[False, True])
    study = Path(index.attrs["root"]) / str(valid[STUDY_PATH].iloc[0])
    views = sorted(p for p in study.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    return str(study), [(p.name, p.read_bytes()) for p in views]


# ------------------------------------------------------------------------------------------------ loader
def loader_cores_needed(train_images_per_s: float, loader_images_per_s_per_core: float) -> float:
    """Loader cores one GPU needs so that augmentation keeps up with training: trainer rate / per-core rate."""
    if loader_images_per_s_per_core <= 0:
        return math.inf
    return train_images_per_s / loader_images_per_s_per_core


def peak_rss_mib() -> float:
    """This process's peak resident memory, in MiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def loader_probe(config: dict, hparams: dict, images: int) -> dict[str, Any]:
    """Images per second one core decodes from the cache and augments, at the config's size and policy.

    Runs the trial's own dataset and transform in this process with one torch and one OpenCV thread, so the
    figure is per core. Builds (or opens) the node's shared cache first; that time is reported apart.
    """
    import cv2

    from muratune.data.augment import create_transform
    from muratune.data.dataset import CachedImageDataset, make_loader
    from muratune.trainables.data import prepare_data

    settings = ExperimentConfig.model_validate(config)
    started = time.perf_counter()
    data = prepare_data(settings)
    cache_s = time.perf_counter() - started
    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        transform = create_transform(hparams["augment_policy"], settings.data.image_size, seed=settings.train.seed)
        dataset = CachedImageDataset(data.cache, data.train, transform=transform)
        loader = make_loader(dataset, int(hparams["batch_size"]), True, 0, settings.train.seed)
        seen, started = 0, time.perf_counter()
        while seen < images:
            for batch, _, _ in loader:
                seen += len(batch)
                if seen >= images:
                    break
        seconds = time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)
    return {
        "images_per_s_per_core": seen / seconds,
        "images": seen,
        "seconds": seconds,
        "cache_s": cache_s,
        "cache": str(data.cache.path),
        "hostname": socket.gethostname(),
    }


# ------------------------------------------------------------------------------------------------ training
def _batches(loader, count: int) -> list:
    """The first ``count`` batches of ``loader``, repeated as needed: the probe times training, not loading."""
    first: list = []
    for batch in loader:
        first.append(batch)
        if len(first) >= min(count, 4):
            break
    return [first[i % len(first)] for i in range(count)]


def training_probe(config: dict, hparams: dict, steps: int, warmup: int, out: str) -> dict[str, Any]:
    """Train the config's backbone for ``steps`` timed steps with muratune's loop, then save a checkpoint.

    Uses the trial's own pieces (``create_trial_model``, ``Runtime`` with AMP and channels_last, the weighted BCE
    of ``train_one_epoch``) on this task's device: its GPU when the config asks for one, else the CPU. Batches are
    drawn once and replayed, so images/s is the trainer's rate. Peak memory is ``torch.cuda.max_memory_allocated``
    on a GPU and the process's peak RSS on the CPU.
    """
    from muratune.data.dataset import CachedImageDataset, Normalizer, make_loader
    from muratune.trainables.data import prepare_data
    from muratune.trainables.loop import Runtime, train_one_epoch
    from muratune.trainables.trial import create_epoch_context, create_trial_model, seed_everything

    settings = ExperimentConfig.model_validate(config)
    seed_everything(settings.train.seed)
    runtime = Runtime.create(settings)  # the trial's choice: CUDA (AMP, channels_last) when it asks for a GPU
    model = create_trial_model(hparams, settings, runtime)
    normalizer = Normalizer.from_model(model, settings.data.in_chans)
    data = prepare_data(settings)
    train_set = CachedImageDataset(data.cache, data.train)
    batch_size = min(int(hparams["batch_size"]), len(train_set))
    batches = _batches(make_loader(train_set, batch_size, True, 0, settings.train.seed, drop_last=True), steps)
    ctx = create_epoch_context(model, data, train_set, batches, hparams, settings, runtime, normalizer)
    ctx.max_steps, ctx.loader = None, batches[:warmup]
    train_one_epoch(ctx)  # cuDNN autotuning and allocator warm-up
    cuda = runtime.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    ctx.loader = batches
    started = time.perf_counter()
    loss = train_one_epoch(ctx)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak_mib = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mib()
    metrics = _save(out, model, settings, data, hparams, normalizer, runtime, loss)
    return {
        "images_per_s": steps * batch_size / seconds,
        "steps": steps,
        "batch_size": batch_size,
        "seconds": seconds,
        "peak_memory_mib": peak_mib,
        "memory_kind": "cuda_max_allocated" if cuda else "process_peak_rss",
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "amp": str(runtime.amp_dtype).removeprefix("torch."),
        "channels_last": runtime.channels_last,
        "train_loss": loss,
        "val_kappa": metrics.get("val_kappa"),
        "checkpoint": out,
        "hostname": socket.gethostname(),
        "files": {p.name: p.read_bytes() for p in Path(out).iterdir() if p.is_file()},
    }


def _save(out: str, model, settings, data, hparams, normalizer, runtime, loss: float) -> dict:
    """Evaluate on internal val and save a checkpoint (safetensors + trial.json) that CAM and serve can load."""
    from muratune.constants import EPOCH, TRAIN_LOSS
    from muratune.data.dataset import CachedImageDataset, make_loader
    from muratune.trainables import checkpoint as ckpt
    from muratune.trainables.data import sample_weights
    from muratune.trainables.loop import evaluate
    from muratune.trainables.trial import trial_record

    val_set = CachedImageDataset(data.cache, data.val)
    val_loader = make_loader(val_set, settings.train.eval_batch_size, False, 0, settings.train.seed)
    val_weights = sample_weights(val_set.frame, data.class_weights)
    metrics, val_images, val_studies = evaluate(model, val_loader, val_set, runtime, normalizer, val_weights)
    metrics = {EPOCH: 1, TRAIN_LOSS: loss, **metrics}
    record = trial_record(hparams, settings, normalizer, 1, metrics)
    ckpt.save_checkpoint(out, model, record, {"epoch": 1, "history": [metrics]}, val_images, val_studies)
    return metrics


# ------------------------------------------------------------------------------------------------ CAM
def cam_probe(checkpoint: str, study: str, out: str, use_gpu: bool) -> dict[str, Any]:
    """Export CAMs of one study with the probe's checkpoint, on this task's GPU (``use_gpu``) or the CPU."""
    from muratune.cam.export import CamOptions, ImageSelection, export_cams

    device = "cuda" if use_gpu else "cpu"
    warnings: list[str] = []
    started = time.perf_counter()
    selection, options = ImageSelection(study=study), CamOptions(device=device)
    summary = export_cams(checkpoint, out, selection, options, progress=False, warn=warnings.append)
    return {
        "images": summary.n_images,
        "unreadable": summary.n_unreadable,
        "layers": summary.layers,
        "seconds": time.perf_counter() - started,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "warnings": warnings,
        "files": sorted(p.name for p in Path(out).glob("images/*.png")),
    }
