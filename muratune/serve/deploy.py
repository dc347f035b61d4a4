"""Ray Serve deployments: model replicas holding the ensemble, behind one FastAPI ingress; start and stop them."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ray import serve

from muratune.cam.cam import DEFAULT_SHIFTS
from muratune.serve.app import ServeLimits, create_app, upload_error
from muratune.serve.guard import WILDCARD_HOSTS, ServeAccess, is_loopback, url_host
from muratune.serve.service import InvalidUpload, PixelLimits, StudyService, Upload, UploadTooLarge

APP_NAME = "muratune"
ERROR = "error"
TOO_LARGE = "too_large"
MAX_ONGOING = 2  # one study in analysis and one waiting (or an /info call) per model replica
# Requests the ingress serves at once (Ray Serve's default is 5). Health checks and short requests need slots while
# uploads arrive; a stalled upload gives its slot back after ServeLimits.body_idle_s, and the bodies held at once stay
# under ServeLimits.max_buffered_bytes whatever the number of slots.
INGRESS_MAX_ONGOING = 64


@dataclass(frozen=True)
class ServeOptions:
    """How to serve an ensemble: address, model replicas and their resources, request limits."""

    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    limits: ServeLimits = field(default_factory=ServeLimits)
    cam_shifts: int = DEFAULT_SHIFTS
    allowed_hosts: tuple[str, ...] = ()
    api_key: str | None = None

    @property
    def access(self) -> ServeAccess:
        """The Host allow-list and API key."""
        return ServeAccess(self.host, tuple(self.allowed_hosts), self.api_key)

    @property
    def url(self) -> str:
        """The base URL of the address actually bound (``http://0.0.0.0:8000`` when bound to all interfaces)."""
        return f"http://{url_host(self.host)}:{self.port}"

    def banner(self, ensemble_dir: str | os.PathLike) -> list[str]:
        """What ``serve`` prints: the bound URL, and a warning when it is reachable beyond this machine."""
        url = self.url
        lines = [f"muratune: serving {Path(ensemble_dir)} at {url}/ (API docs at {url}/docs); Ctrl-C stops"]
        if not is_loopback(self.host):
            where = "every network interface" if self.host in WILDCARD_HOSTS else self.host
            lines.append(
                f"muratune: warning: the server is reachable on {where}, not only this machine; every API request "
                "needs the API key (X-API-Key header or Authorization: Bearer); Host names accepted: "
                + ", ".join(self.access.host_patterns())
            )
        return lines


@serve.deployment(name="EnsembleModel")
class EnsembleModel:
    """One model replica: loads the ensemble once and analyses studies; errors come back as values, not raises."""

    def __init__(
        self, ensemble_dir: str, use_gpu: bool = False, cam_shifts: int = DEFAULT_SHIFTS, pixels: dict | None = None
    ):
        limits = PixelLimits(**(pixels or {}))
        self.service = StudyService(ensemble_dir, _replica_device(use_gpu), cam_shifts=cam_shifts, limits=limits)

    def analyse(self, uploads: list[tuple[str, bytes]], body_part: str | None, overlays: bool) -> dict:
        """``StudyService.analyse`` on ``(filename, bytes)`` pairs; ``{"error": reason}`` for a bad upload."""
        try:
            return self.service.analyse([Upload(name, data) for name, data in uploads], body_part, overlays)
        except InvalidUpload as err:
            return {ERROR: str(err), TOO_LARGE: isinstance(err, UploadTooLarge)}

    def info(self) -> dict:
        """The ensemble's description (see ``StudyService.info``)."""
        return self.service.info()


class RemoteBackend:
    """The app's backend on Ray Serve: calls the model deployment through its handle."""

    def __init__(self, handle):
        self.handle = handle

    async def analyse(self, uploads: list[Upload], body_part: str | None, overlays: bool) -> dict:
        pairs = [(u.filename, u.data) for u in uploads]
        result = await self.handle.analyse.remote(pairs, body_part, overlays)
        if ERROR in result:
            raise upload_error((UploadTooLarge if result.get(TOO_LARGE) else InvalidUpload)(result[ERROR]))
        return result

    async def info(self) -> dict:
        return await self.handle.info.remote()


@serve.deployment(name="HttpIngress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=INGRESS_MAX_ONGOING)
@serve.ingress()
class HttpIngress:
    """The HTTP entry point: the FastAPI app, built on the replica around a handle to the model deployment."""

    def __init__(self, model_handle, limits: dict, access: dict):
        self.backend = RemoteBackend(model_handle)
        self.limits = ServeLimits(**limits)
        self.access = ServeAccess(**access)

    def __serve_build_asgi_app__(self):
        return create_app(self.backend, self.limits, self.access)


def _replica_device(use_gpu: bool) -> str:
    """``cuda`` for a replica given a GPU share (Ray sets CUDA_VISIBLE_DEVICES), else ``cpu``."""
    import torch

    return "cuda" if use_gpu and torch.cuda.is_available() else "cpu"


def build_application(ensemble_dir: str | os.PathLike, options: ServeOptions):
    """The Serve application: ``options.replicas`` model replicas (with their CPU/GPU share) and the ingress."""
    actor_options = {
        "num_cpus": options.cpus_per_replica,
        "num_gpus": options.gpus_per_replica,
        # glibc gives each thread its own heap arena and keeps what a study freed there; two arenas keep a replica's
        # memory near one study's working set instead of one per request thread.
        "runtime_env": {"env_vars": {"MALLOC_ARENA_MAX": "2"}},
    }
    # A replica analyses one study at a time (StudyService's lock); more requests wait at the ingress as bytes.
    model = EnsembleModel.options(  # type: ignore[attr-defined]  # @serve.deployment makes it a Deployment
        num_replicas=options.replicas, ray_actor_options=actor_options, max_ongoing_requests=MAX_ONGOING
    )
    pixels = asdict(options.limits.pixels)
    replica = model.bind(str(Path(ensemble_dir).resolve()), options.gpus_per_replica > 0, options.cam_shifts, pixels)
    return HttpIngress.bind(replica, asdict(options.limits), asdict(options.access))  # type: ignore[attr-defined]


def start_server(ensemble_dir: str | os.PathLike, options: ServeOptions) -> str:
    """Deploy the ensemble on the connected Ray cluster (Ray must be initialised) and return the base URL.

    Raises:
        UserError: the host is beyond loopback and no API key is set.
    """
    options.access.check()
    serve.start(http_options={"host": options.host, "port": options.port})
    serve.run(build_application(ensemble_dir, options), name=APP_NAME, route_prefix="/", blocking=False)
    return options.url


def stop_server() -> None:
    """Remove the application and shut Serve down on this cluster."""
    serve.shutdown()


def check_replica_resources(options: ServeOptions) -> None:
    """Refuse replicas the connected cluster can never place (more CPUs or GPUs per replica than it has in all).

    Raises:
        UserError: a replica asks for more than the cluster's total.
    """
    import ray

    from muratune.errors import UserError

    total = ray.cluster_resources()
    for key, need, flag in (
        ("GPU", options.gpus_per_replica, "--gpus-per-replica"),
        ("CPU", options.cpus_per_replica, "--cpus-per-replica"),
    ):
        have = float(total.get(key, 0))
        if need > have:
            raise UserError(f"{flag} {need:g}: the Ray cluster has {have:g} {key}(s) in all")


def serve_until_interrupted(
    ensemble_dir: str | os.PathLike, options: ServeOptions, address: str | None = None, echo=print
) -> None:
    """Check the ensemble here, deploy it on Ray Serve, print the URL and serve until Ctrl-C or SIGTERM.

    Raises:
        UserError: the ensemble cannot be loaded, or the cluster cannot place a replica.
    """
    import signal
    import threading

    import ray

    from muratune.cluster import connect_ray
    from muratune.ensemble.load import load_ensemble

    options.access.check()
    load_ensemble(ensemble_dir, device="cpu")  # a bad ensemble is a one-line error before Ray starts
    started = connect_ray(address)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        check_replica_resources(options)
        start_server(ensemble_dir, options)
        for line in options.banner(ensemble_dir):
            echo(line)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        echo("muratune: stopping the server")
        if started:
            ray.shutdown()  # our own local Ray: Serve goes with it
        else:
            serve.delete(APP_NAME)  # a shared cluster: remove only our application
