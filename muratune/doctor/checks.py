"""The readiness checks, in order: each fills its slot with a status, a figure and a detail (see ``report.timed``)."""

from __future__ import annotations

import math
import uuid
from pathlib import Path
from typing import Any

from muratune.doctor import probes
from muratune.doctor.context import Context
from muratune.doctor.report import FAIL, PASS, SKIP, WARN

NO_GPU = "no GPU in the Ray cluster"


def _get(ctx: Context, ref, what: str):
    """``ray.get`` with the doctor's timeout; a task that cannot be placed or hangs becomes a clear failure."""
    import ray

    try:
        return ray.get(ref, timeout=ctx.sizes.timeout_s)
    except ray.exceptions.GetTimeoutError:
        ray.cancel(ref, force=True)
        raise TimeoutError(
            f"{what} did not finish in {ctx.sizes.timeout_s:.0f} s: is the cluster busy, or are nodes still starting?"
        ) from None


def _remote(func, **options):
    import ray

    return ray.remote(func).options(max_retries=0, **options)


def on_every_node(ctx: Context, func, *args) -> dict[str, Any]:
    """Run ``func(*args)`` in a zero-CPU task pinned to each alive node; returns each node's result by address."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    refs = {}
    for node in ctx.nodes:
        pinned = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        refs[node["NodeManagerAddress"]] = _remote(func, num_cpus=0, scheduling_strategy=pinned).remote(*args)
    return {address: _get(ctx, ref, f"{func.__name__} on {address}") for address, ref in refs.items()}


def _node_row(node: dict) -> dict:
    return {
        "address": node["NodeManagerAddress"],
        "node_id": node["NodeID"],
        "resources": {k: node["Resources"].get(k, 0) for k in ("CPU", "GPU", "memory")},
    }


def _resources(node: dict) -> str:
    res = node["Resources"]
    return f"{node['NodeManagerAddress']}: {res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU"


# ------------------------------------------------------------------------------------------------ cluster
def check_ray_cluster(ctx: Context, slot: dict) -> None:
    """Alive nodes, CPUs and GPUs as Tune will see them; the config's per-trial request against them."""
    import ray

    every = ray.nodes()
    ctx.nodes = [n for n in every if n.get("Alive")]
    total, free = ray.cluster_resources(), ray.available_resources()
    cpus, gpus = total.get("CPU", 0), total.get("GPU", 0)
    slot["figure"] = f"{len(ctx.nodes)} node(s), {cpus:g} CPUs, {gpus:g} GPUs"
    slot["data"] = {
        "nodes": [_node_row(n) for n in ctx.nodes],
        "cluster_resources": dict(total),
        "available_resources": dict(free),
        "dead_nodes": len(every) - len(ctx.nodes),
    }
    notes = ["; ".join(_resources(n) for n in ctx.nodes)]
    status = PASS
    res = ctx.user_config.resources
    if res.gpus_per_trial * res.workers_per_trial > gpus:
        status = FAIL
        notes.append(f"the config asks {res.gpus_per_trial:g} GPU(s) x {res.workers_per_trial} worker(s) per trial")
    if len(every) > len(ctx.nodes):
        status = WARN if status == PASS else status
        notes.append(f"{len(every) - len(ctx.nodes)} node(s) dead")
    busy = cpus - free.get("CPU", 0)
    if busy > 0:
        status = WARN if status == PASS else status
        notes.append(f"{busy:g} CPUs already in use by other work")
    slot["status"], slot["detail"] = status, "; ".join(notes)


def check_cuda(ctx: Context, slot: dict) -> None:
    """On every GPU node, a task holding all the node's GPUs reports the CUDA devices torch sees and bf16 support."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not ctx.use_gpu:
        driver = probes.node_facts()
        slot.update(status=SKIP, figure="no GPU", data={"driver": driver})
        slot["detail"] = f"{NO_GPU} (driver: torch {driver['torch']}, CUDA available {driver['cuda_available']}); "
        slot["detail"] += "the GPU checks below run their paths on the CPU instead"
        return
    facts = []
    for node in ctx.gpu_nodes:
        strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        task = _remote(probes.node_facts, num_cpus=0, num_gpus=node["Resources"]["GPU"], scheduling_strategy=strategy)
        facts.append(
            {
                "address": node["NodeManagerAddress"],
                "ray_gpus": node["Resources"]["GPU"],
                **_get(ctx, task.remote(), f"the CUDA check on {node['NodeManagerAddress']}"),
            }
        )
    devices = [d for f in facts for d in f["devices"]]
    names = sorted({d["name"] for d in devices})
    slot["figure"] = f"{len(devices)} CUDA device(s) ({', '.join(names) or 'none'}); bf16 " + (
        "yes" if all(f["bf16"] for f in facts) else "no"
    )
    slot["data"] = {"nodes": facts}
    short = [f for f in facts if len(f["devices"]) < int(f["ray_gpus"])]
    if short:
        slot["status"] = FAIL
        slot["detail"] = "; ".join(
            f"{f['address']}: Ray offers {f['ray_gpus']:g} GPU(s) but torch sees {len(f['devices'])} "
            f"(torch {f['torch']} built for CUDA {f['cuda_build']}): check the driver and the torch build"
            for f in short
        )
    elif not all(f["bf16"] for f in facts):
        slot["status"], slot["detail"] = WARN, "no bf16 on some GPUs: AMP runs in fp16 with a GradScaler there"
    else:
        slot["status"], slot["detail"] = PASS, f"AMP in bf16; torch {facts[0]['torch']}, CUDA {facts[0]['cuda_build']}"


def check_shared_storage(ctx: Context, slot: dict) -> None:
    """A task pinned to every alive node writes a file under the storage; the driver reads every file back."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    where, token = f"{ctx.storage}/storage_check", uuid.uuid4().hex
    refs = {}
    for node in ctx.nodes:
        pinned = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        task = _remote(probes.write_storage_marker, num_cpus=0, scheduling_strategy=pinned)
        refs[node["NodeID"]] = task.remote(where, token)
    problems, seen = [], 0
    for node in ctx.nodes:
        label = node["NodeManagerAddress"]
        try:
            _get(ctx, refs[node["NodeID"]], f"the storage write on {label}")
        except (ray.exceptions.RayError, TimeoutError) as err:
            problems.append(f"{label} could not write: {str(err).strip().splitlines()[-1][:200]}")
            continue
        text = probes.read_storage_marker(where, node["NodeID"])
        if text != f"{token} {node['NodeID']}":
            problems.append(f"the driver cannot read what {label} wrote")
        else:
            seen += 1
    slot["figure"] = f"{seen}/{len(ctx.nodes)} nodes"
    slot["data"] = {"storage": where, "problems": problems}
    if problems:
        slot["status"] = FAIL
        slot["detail"] = "; ".join(problems) + ". Tune needs storage every node reaches: set storage to NFS or s3://"
    else:
        slot["status"], slot["detail"] = (
            PASS,
            f"every node wrote and the driver read back under {ctx.user_config.storage}",
        )


def check_dataset(ctx: Context, slot: dict) -> None:
    """The dataset the probes use: the given one, or a synthetic one drawn at the same path on every node."""
    root = str(ctx.config.data.root)
    if ctx.results["data"]["given"]:
        from muratune.data.index import load_index

        slot.update(status=PASS, figure=f"{len(load_index(root))} images", detail=f"{root} (given with --data)")
        return
    made = on_every_node(ctx, probes.make_synthetic, root, ctx.sizes.studies, ctx.sizes.long_side)
    images = sorted({m["images"] for m in made.values()})
    slot["data"] = {"root": root, "nodes": made}
    slot["figure"] = f"{images[0]} images on {len(made)}/{len(ctx.nodes)} nodes"
    detail = f"synthetic: {ctx.sizes.studies} studies at {ctx.sizes.long_side} px in {root} on each node"
    slot.update(status=PASS if len(images) == 1 else FAIL, detail=detail)


# ------------------------------------------------------------------------------------------------ probes
def check_loader(ctx: Context, slot: dict) -> None:
    """Images per second one core decodes and augments from the cache, at the config's size and policy."""
    task = _remote(probes.loader_probe, **ctx.probe_resources())
    config = ctx.with_values({"resources.gpus_per_trial": 1 if ctx.use_gpu else 0, "resources.cpus_per_trial": 1})
    got = _get(ctx, task.remote(config.model_dump(mode="json"), ctx.hparams, ctx.sizes.loader_images), "the loader")
    ctx.results["loader"] = got
    size = ctx.config.data.image_size
    slot.update(status=PASS, figure=f"{got['images_per_s_per_core']:.0f} img/s per core", data=got)
    slot["detail"] = (
        f"policy {ctx.hparams['augment_policy']!r} at {size} px, 1 thread on {got['hostname']}; "
        f"cache ready in {got['cache_s']:.1f} s"
    )


def check_training(ctx: Context, slot: dict) -> None:
    """A short training probe of the config's backbone on one GPU (AMP, channels_last), or on the CPU."""
    task = _remote(probes.training_probe, **ctx.probe_resources())
    config = ctx.with_values({"resources.gpus_per_trial": 1 if ctx.use_gpu else 0, "resources.cpus_per_trial": 1})
    out = str(ctx.local / probes.PROBE_DIR)
    args = (config.model_dump(mode="json"), ctx.hparams, ctx.sizes.steps, ctx.sizes.warmup, out)
    got = _get(ctx, task.remote(*args), "the training probe")
    on_every_node(ctx, probes.write_files, out, got.pop("files"))  # CAM tasks and replicas may land anywhere
    ctx.results["training"] = got
    memory = "peak" if got["memory_kind"] == "cuda_max_allocated" else "peak RSS"
    slot["figure"] = f"{got['images_per_s']:.0f} img/s, {memory} {got['peak_memory_mib']:.0f} MiB"
    slot["data"] = got
    what = (
        f"{ctx.hparams['backbone']} at {ctx.config.data.image_size} px, batch {got['batch_size']}, "
        f"{got['steps']} steps on {got['device']} ({got['hostname']}), AMP {got['amp']}, "
        f"channels_last {got['channels_last']}"
    )
    if not ctx.use_gpu:
        slot.update(status=PASS, detail=f"{NO_GPU}: the same probe on the CPU, 1 thread; {what}")
    elif got["amp"] == "None" or not got["channels_last"]:
        slot.update(status=WARN, detail=f"{what}; train.amp or train.channels_last is off in the config")
    else:
        slot.update(status=PASS, detail=what)


def cores_verdict(needed: float, nodes: list[dict]) -> tuple[str, str, list[dict]]:
    """Compare the loader cores one GPU needs with each GPU node's CPUs per GPU.

    Returns:
        The status (``pass`` when every GPU node has at least ``needed`` CPUs per GPU, else ``warn``), a detail
        line naming the nodes that fall short, and one row per GPU node.
    """
    rows = []
    for node in nodes:
        gpus = node["Resources"].get("GPU", 0)
        if gpus > 0:
            have = node["Resources"].get("CPU", 0) / gpus
            rows.append({"address": node["NodeManagerAddress"], "cpus_per_gpu": have, "enough": have >= needed})
    short = [r for r in rows if not r["enough"]]
    if not short:
        return PASS, f"every GPU node has >= {math.ceil(needed)} CPUs per GPU for the loader", rows
    names = ", ".join(f"{r['address']} ({r['cpus_per_gpu']:g})" for r in short)
    detail = (
        f"{names} fall short: the GPU will wait on augmentation; use nodes with more CPUs per GPU, a lighter policy "
        f"or a smaller image size"
    )
    return WARN, detail, rows


def check_cores_per_gpu(ctx: Context, slot: dict) -> None:
    """Loader cores per GPU to keep up with the training probe (probe img/s / loader img/s per core), per node."""
    train, loader = ctx.result("training"), ctx.result("loader")
    needed = probes.loader_cores_needed(train["images_per_s"], loader["images_per_s_per_core"])
    slot["data"] = {
        "needed": needed,
        "train_images_per_s": train["images_per_s"],
        "loader_images_per_s_per_core": loader["images_per_s_per_core"],
    }
    if not ctx.use_gpu:
        slot.update(status=SKIP, figure=f"{needed:.2f} cores per CPU trial")
        slot["detail"] = f"{NO_GPU}; for reference, the loader needs {needed:.2f} cores to feed the CPU probe"
        return
    status, detail, rows = cores_verdict(needed, ctx.nodes)
    workers = (
        math.ceil(needed * ctx.user_config.resources.gpus_per_trial) if ctx.user_config.resources.gpus_per_trial else 0
    )
    have = sorted(r["cpus_per_gpu"] for r in rows)
    slot["data"]["nodes"] = rows
    slot.update(status=status, figure=f"needs {needed:.1f} cores/GPU; nodes have {have[0]:g}-{have[-1]:g}")
    slot["detail"] = detail + (f"; set data.num_workers to about {workers} per trial" if workers else "")


# ------------------------------------------------------------------------------------------------ CAM and serve
def probe_study(ctx: Context) -> tuple[str, list[tuple[str, bytes]]]:
    """A test-split study and its views' bytes, read on a node (the driver may not see the data), once."""
    if "study" not in ctx.results:
        study, views = _get(ctx, _remote(probes.pick_study, num_cpus=0).remote(ctx.config.data.root), "picking a study")
        ctx.results["study"] = {"study": study, "views": views}
    return ctx.results["study"]["study"], ctx.results["study"]["views"]


def check_cam(ctx: Context, slot: dict) -> None:
    """CAM export with the probe's checkpoint on a GPU (or the CPU), through ``export_cams``."""
    checkpoint = ctx.result("training")["checkpoint"]
    study = Path(probe_study(ctx)[0])
    task = _remote(probes.cam_probe, **ctx.probe_resources())
    got = _get(ctx, task.remote(checkpoint, str(study), str(ctx.local / "cams"), ctx.use_gpu), "the CAM export")
    ctx.results["cam"] = got
    slot["figure"] = f"{got['images']} CAMs in {got['seconds']:.1f} s on {got['device']}"
    slot["data"] = got
    where = f"study {study.name} of {study.parent.name}; layers {got['layers']}" + (
        "" if ctx.use_gpu else f"; {NO_GPU}"
    )
    ok = got["images"] > 0 and not got["unreadable"] and len(got["files"]) == got["images"]
    slot.update(status=PASS if ok else FAIL, detail=where if ok else f"{where}; {got['unreadable']} unreadable")
