"""The search checks: 4 fractional-GPU trials and a data-parallel trial, each a real tiny muratune search."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from muratune.doctor.checks import NO_GPU
from muratune.doctor.context import Context
from muratune.doctor.report import FAIL, PASS, WARN


def _overlap(trial_dirs: list[str]) -> int | None:
    """The most trials that were training at the same moment, from each trial's ``result.json``; None if unread."""
    import json

    spans = []
    for trial_dir in trial_dirs:
        path = Path(trial_dir) / "result.json"
        if not path.is_file():
            return None
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if not rows:
            return None
        end = max(r["timestamp"] for r in rows)
        spans.append((end - max(r["time_total_s"] for r in rows), end))
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    most = running = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def _search(ctx: Context, name: str, values: dict[str, Any], trainable=None):
    from muratune.search.run import run_search

    config = ctx.with_values(
        {
            "name": f"doctor-{ctx.token}-{name}",
            "budget.time_budget_s": ctx.sizes.timeout_s,
            "space.backbone": ctx.hparams["backbone"],
            "space.batch_size": ctx.hparams["batch_size"],
            **values,
        }
    )
    lines: list[str] = []
    result = run_search(config, address=ctx.address, trainable=trainable, echo=lines.append)
    return config, result


def _trial_cpus(ctx: Context, nodes: list[dict], share: int, reserve: float = 0.0) -> float:
    """CPUs per trial so that ``share`` trials fit on the largest of ``nodes``, at most the config's."""
    most = max(n["Resources"].get("CPU", 0) for n in nodes)
    return max(0.25, min(ctx.user_config.resources.cpus_per_trial, (most - reserve) / share))


def check_fractional_trials(ctx: Context, slot: dict) -> None:
    """A real muratune search of 4 one-epoch trials at gpus_per_trial 0.25 (4 CPU trials on a CPU cluster)."""
    gpu = 0.25 if ctx.use_gpu else 0
    cpus = _trial_cpus(ctx, ctx.gpu_nodes or ctx.nodes, 4)
    values = {
        "budget.num_samples": 4,
        "resources.max_concurrent_trials": 4,
        "resources.gpus_per_trial": gpu,
        "resources.cpus_per_trial": cpus,
        "resources.workers_per_trial": 1,
    }
    _, result = _search(ctx, "trials", values)
    summary = result.summary
    done = int((summary["state"] == "COMPLETE").sum()) if len(summary) else 0
    at_once = _overlap(list(summary["trial_dir"])) if len(summary) else None
    slot["figure"] = f"{done}/4 complete" + (f", up to {at_once} at once" if at_once is not None else "")
    slot["data"] = {
        "complete": done,
        "max_concurrent_seen": at_once,
        "cpus_per_trial": cpus,
        "gpus_per_trial": gpu,
        "states": list(summary["state"]) if len(summary) else [],
        "errors": [e for e in summary.get("error", []) if isinstance(e, str)],
    }
    how = f"gpus_per_trial 0.25, {cpus:g} CPUs each" if ctx.use_gpu else f"{NO_GPU}: 4 CPU trials, {cpus:g} CPUs each"
    if done < 4:
        errors = slot["data"]["errors"]
        slot.update(status=FAIL, detail=f"{how}; " + (errors[0] if errors else "trials did not finish in time"))
    else:
        slot.update(status=PASS, detail=f"{how}; one epoch of {ctx.sizes.trial_steps} steps each")


def data_parallel_values(world: int, cpus: float, use_gpu: bool) -> dict[str, Any]:
    """The data-parallel check's settings: one trial of ``world`` workers, with no scheduler to stop or pause it (a
    paused data-parallel trial cannot resume, so promotion-type ASHA refuses one)."""
    return {
        "budget.num_samples": 1,
        "budget.scheduler": "none",
        "resources.max_concurrent_trials": 1,
        "resources.workers_per_trial": world,
        "resources.gpus_per_trial": 1 if use_gpu else 0,
        "resources.cpus_per_trial": cpus,
    }


def check_data_parallel(ctx: Context, slot: dict) -> None:
    """A data-parallel trial (a TorchTrainer inside Tune): world size 2 on a node with 2 GPUs, else 1; NCCL or gloo."""
    from muratune.search.resources import DDP_DRIVER_CPUS
    from muratune.trainables.distributed import ddp_tune_trainable

    world = 2 if any(n["Resources"].get("GPU", 0) >= 2 for n in ctx.gpu_nodes) else 1
    cpus = _trial_cpus(ctx, ctx.gpu_nodes or ctx.nodes, world, reserve=DDP_DRIVER_CPUS)
    values = data_parallel_values(world, cpus, ctx.use_gpu)
    before = set(_placement_groups())
    _, result = _search(ctx, "ddp", values, trainable=ddp_tune_trainable)
    leaked = release_leaked_groups(before)
    backend = "nccl" if ctx.use_gpu else "gloo"
    row = result.summary.iloc[0] if len(result.summary) else None
    checkpoint = Path(str(row["checkpoint"])) / "model.safetensors" if row is not None and row["checkpoint"] else None
    ok = row is not None and row["state"] == "COMPLETE"
    slot["figure"] = f"world size {world} over {backend}: " + ("complete" if ok else "failed")
    slot["data"] = {
        "world_size": world,
        "backend": backend,
        "state": None if row is None else row["state"],
        "checkpoint": None if checkpoint is None else str(checkpoint.parent),
        "time_s": None if row is None else float(row["time_s"]),
        "leaked_placement_groups": leaked,
    }
    how = f"TorchTrainer with {world} worker(s) inside a Tune trial" + ("" if ctx.use_gpu else f" ({NO_GPU}: CPU)")
    if not ok:
        error = row["error"] if row is not None and isinstance(row["error"], str) else "the trial did not finish"
        slot.update(status=FAIL, detail=f"{how}; {error}")
    elif checkpoint is not None and not _exists(checkpoint):
        slot.update(status=FAIL, detail=f"{how}; finished without a checkpoint at {checkpoint.parent}")
    elif leaked:
        slot["status"] = WARN
        slot["detail"] = (
            f"{how}; complete, but 30 s after the trial ended its worker group's placement group still held "
            f"{leaked}: the doctor removed it; a search of several data-parallel trials could run out of resources"
        )
    else:
        slot.update(status=PASS, detail=f"{how}; reported to Tune with a checkpoint")


def _placement_groups() -> dict[str, dict]:
    import ray.util

    return dict(ray.util.placement_group_table())


def release_leaked_groups(before: set[str], wait_s: float = 30.0) -> list[dict]:
    """Placement groups created since ``before`` that are still reserved after ``wait_s``; removes them.

    Only groups the doctor's own search created are touched. Returns their bundles (what they held).
    """
    import time

    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    deadline = time.monotonic() + wait_s
    while True:
        left = {k: v for k, v in _placement_groups().items() if k not in before and v["state"] != "REMOVED"}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    for group_id in left:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group_id))))
    return [v["bundles"] for v in left.values()]


def _exists(path: Path) -> bool:
    """Whether a local or remote (``s3://``) file exists."""
    import pyarrow.fs

    fs, where = pyarrow.fs.FileSystem.from_uri(str(path) if "://" in str(path) else str(path.resolve()))
    return fs.get_file_info(where).type == pyarrow.fs.FileType.File
