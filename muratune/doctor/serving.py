"""The serve check: the probe's checkpoint on a Ray Serve replica (a GPU one on a GPU cluster) answering /predict."""

from __future__ import annotations

import socket
from pathlib import Path

from muratune.body_parts import body_part_in_path
from muratune.constants import BODY_PARTS, short_part
from muratune.doctor.checks import NO_GPU, probe_study
from muratune.doctor.context import Context
from muratune.doctor.report import FAIL, PASS

DOCTOR_APP = "muratune-doctor"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve_client():
    """The running Serve controller's client, or None (a private Ray API: Serve keeps its port when already up)."""
    try:
        from ray.serve.context import _get_global_client

        return _get_global_client(raise_if_no_controller_running=False)
    except Exception:  # noqa: BLE001 - a moved private API only costs the reuse of a running Serve
        return None


def _http_port(requested: int) -> int:
    """The port Serve's proxy listens on: ours, unless Serve was already running with its own."""
    client = _serve_client()
    port = getattr(getattr(client, "http_config", None), "port", None)
    return int(port) if port else requested


def check_serve(ctx: Context, slot: dict) -> None:
    """Deploy the probe checkpoint as its own Serve application, POST a study to /predict, then remove it.

    The application has its own name and route prefix, so a muratune server already running on the cluster is
    left alone; Serve itself is shut down only if this check started it.
    """
    import requests
    from ray import serve

    from muratune.serve.deploy import ServeOptions, build_application, check_replica_resources

    checkpoint = ctx.result("training")["checkpoint"]
    study, views = probe_study(ctx)
    options = ServeOptions(port=_free_port(), cpus_per_replica=1, gpus_per_replica=1 if ctx.use_gpu else 0)
    check_replica_resources(options)
    serve_was_running = _serve_client() is not None
    serve.start(http_options={"host": options.host, "port": options.port})
    try:
        serve.run(
            build_application(checkpoint, options), name=DOCTOR_APP, route_prefix=f"/{DOCTOR_APP}", blocking=False
        )
        url = f"http://127.0.0.1:{_http_port(options.port)}/{DOCTOR_APP}"
        files = [("files", (name, content, "image/png")) for name, content in views]
        part = body_part_in_path(study)
        form = {"body_part": short_part(part)} if part in BODY_PARTS else {}
        response = requests.post(f"{url}/predict", files=files, data=form, timeout=ctx.sizes.timeout_s)
        info = requests.get(f"{url}/info", timeout=60).json()
    finally:
        serve.delete(DOCTOR_APP)
        if not serve_was_running:
            serve.shutdown()
    _judge(ctx, slot, response, info, Path(study), len(views))


def _judge(ctx: Context, slot: dict, response, info: dict, study: Path, views: int) -> None:
    """The check's result from the /predict response and the replica's /info."""
    device = str(info.get("device"))
    slot["data"] = {"status_code": response.status_code, "device": device, "views": views}
    if response.status_code != 200:
        slot.update(status=FAIL, figure=f"HTTP {response.status_code}", detail=response.text[:300])
        return
    body = response.json()
    slot["data"]["prob"] = body["prob"]
    slot["figure"] = f"HTTP 200 on {device}: p={body['prob']:.2f} ({body['body_part']})"
    if ctx.use_gpu and not device.startswith("cuda"):
        slot.update(status=FAIL, detail="the replica was given a GPU but its model runs on the CPU")
        return
    where = "a GPU replica (gpus_per_replica 1)" if ctx.use_gpu else f"{NO_GPU}: a CPU replica"
    slot.update(status=PASS, detail=f"{where} answered /predict for {views} view(s) of {study.name}")
