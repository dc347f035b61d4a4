"""``run_doctor``: connect to Ray, prepare a small work folder (synthetic data unless given), run every check."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from muratune.config import ExperimentConfig, load_config
from muratune.doctor import checks, searches, serving
from muratune.doctor.context import Context, Sizes, with_values
from muratune.doctor.report import DoctorReport, timed
from muratune.errors import UserError
from muratune.layout import is_remote

QUICK_SIZE = 32
QUICK_BACKBONE = "resnet10t"


def shrink(config: ExperimentConfig, quick: bool, data_root: Path, storage: str, steps: int) -> ExperimentConfig:
    """The config the checks run: one epoch of a few steps; with ``quick`` 32 px, resnet10t, no pretrained weights."""
    values: dict[str, Any] = {
        "data.root": str(data_root),
        "storage": storage,
        "budget.max_epochs": 1,
        "budget.grace_period": 1,
        "budget.time_budget_s": None,
        "train.max_steps_per_epoch": steps,
        "optuna.storage": None,
        "failure.max_failures": 0,
        "debug.fault": None,
    }
    if quick:
        batch = min(int(config.space.batch_size.default()), 16)
        values.update(
            {
                "data.image_size": QUICK_SIZE,
                "data.num_workers": 0,
                "model.pretrained": False,
                "model.weights_dir": None,
                "space.backbone": {"type": "fixed", "value": QUICK_BACKBONE},
                "space.batch_size": {"type": "fixed", "value": batch},
            }
        )
    return with_values(config, values)


def _resolve_config(config: str | os.PathLike | ExperimentConfig | None) -> ExperimentConfig:
    if isinstance(config, ExperimentConfig):
        return config
    return load_config(config) if config is not None else ExperimentConfig()


def doctor_paths(storage: str) -> tuple[str, Path, str]:
    """A fresh token, the node-local scratch folder named after it, and the storage the doctor's searches use.

    The scratch folder has the same path on every node, so synthetic data drawn on each node (the generator is
    deterministic) and the probe checkpoint copied to each node are found wherever a trial or replica lands.
    """
    token = uuid.uuid4().hex[:8]
    local = Path(tempfile.gettempdir()) / f"muratune-doctor-{token}"
    if is_remote(storage):
        return token, local, f"{storage.rstrip('/')}/.doctor-{token}"
    return token, local, str(Path(storage.removeprefix("file://")).expanduser().resolve() / f".doctor-{token}")


def check_data(data: str | os.PathLike | None) -> Path | None:
    """The given dataset root, checked here before anything starts (a one-line UserError if bad)."""
    from muratune.data.index import load_index

    if data is None:
        return None
    root = Path(data).expanduser()
    if not root.exists():
        raise UserError(f"--data {data}: no such folder")
    load_index(root)
    return root.resolve()


def _cleanup(ctx: Context, keep: bool) -> None:
    """Remove the doctor's scratch folders on every node and its search folder; keep them when a check failed."""
    from muratune.doctor.probes import remove_folder

    if keep:
        ctx.echo(f"doctor: a check failed; kept for inspection: {ctx.local} (on each node) and {ctx.storage}")
        return
    try:
        checks.on_every_node(ctx, remove_folder, str(ctx.local))
    except Exception as err:  # noqa: BLE001 - cleaning up must not hide the report
        ctx.echo(f"doctor: could not remove {ctx.local} on every node ({err})")
    if is_remote(ctx.storage):
        import pyarrow.fs

        fs, path = pyarrow.fs.FileSystem.from_uri(ctx.storage)
        try:
            fs.delete_dir(path)
        except (FileNotFoundError, OSError):
            pass
        for name in ("trials", "ddp"):
            shutil.rmtree(Path("runs") / f"doctor-{ctx.token}-{name}", ignore_errors=True)
    else:
        shutil.rmtree(ctx.storage, ignore_errors=True)


def all_checks() -> list[tuple[str, Callable[[Context, dict], None]]]:
    """Every check, in the order it runs: later ones use what earlier ones measured (``Context.results``)."""
    return [
        ("ray_cluster", checks.check_ray_cluster),
        ("cuda_devices", checks.check_cuda),
        ("shared_storage", checks.check_shared_storage),
        ("dataset", checks.check_dataset),
        ("loader_throughput", checks.check_loader),
        ("training_probe", checks.check_training),
        ("cores_per_gpu", checks.check_cores_per_gpu),
        ("fractional_gpu_trials", searches.check_fractional_trials),
        ("data_parallel", searches.check_data_parallel),
        ("cam_export", checks.check_cam),
        ("serve_replica", serving.check_serve),
    ]


def run_doctor(
    address: str | None = None,
    data: str | os.PathLike | None = None,
    quick: bool = False,
    config: str | os.PathLike | ExperimentConfig | None = None,
    out: str | os.PathLike | None = None,
    echo: Callable[[str], None] = print,
) -> DoctorReport:
    """Check that a Ray cluster is ready for a long search, exercising every accelerator path muratune has.

    Args:
        address: Ray cluster address (``auto``, ``ray://...``); default ``RAY_ADDRESS`` or a local Ray started here
            (and shut down at the end; a Ray that was already running is left running).
        data: a MURA-format dataset root; default a small synthetic one written for the run.
        quick: everything small (32 px, resnet10t, no pretrained weights, a few steps): minutes on 2 CPU cores.
        config: the experiment config (YAML path or ExperimentConfig) whose size, policy, backbone and storage are
            checked; default the built-in defaults.
        out: where to write the JSON report (atomically).
        echo: where progress lines go.

    Returns:
        The report; ``report.exit_code`` is 1 when a check failed.

    Raises:
        UserError: a bad config or ``data`` path (before anything starts).
    """
    import ray

    from muratune.cluster import connect_ray
    from muratune.trainables.trial import trial_inputs

    started = time.perf_counter()
    user_config = _resolve_config(config)
    sizes = Sizes.create(quick, QUICK_SIZE if quick else user_config.data.image_size)
    given = check_data(data)
    token, local, storage = doctor_paths(user_config.storage)
    root = given or local / "data"
    shrunk = shrink(user_config, quick, root, storage, sizes.trial_steps)
    hparams, _ = trial_inputs(shrunk.space.defaults(), shrunk)
    report = DoctorReport(quick=quick, address=address or os.environ.get("RAY_ADDRESS"))
    ray_started = connect_ray(address)
    try:
        ctx = Context(shrunk, user_config, hparams, sizes, quick, address, token, local, storage, echo=echo)
        ctx.results["data"] = {"given": given is not None}
        for name, check in all_checks():
            with timed(report, name, echo) as slot:
                check(ctx, slot)
        report.wall_s = time.perf_counter() - started
        _cleanup(ctx, keep=bool(report.failed))
    finally:
        if ray_started:
            ray.shutdown()
    if out is not None:
        report.write(out)
    return report
