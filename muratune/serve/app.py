"""The HTTP layer: a FastAPI app (predict, cam, health, info, the upload page) over a study-analysis backend.

Outermost first, every request passes: the Host allow-list (400), the same-origin rule for POSTs (403), on the API
routes the API key when one is set (401, from the headers, before any body is read), the body's size limit (413) and
read timeout (408: silent too long, or slower than a floor), then the image headers (413/422).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Protocol

from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from muratune import __version__
from muratune.data.images import MAX_PIXELS, MAX_SIDE
from muratune.errors import UserError
from muratune.serve.guard import ApiKeyGate, SameOriginPost, ServeAccess
from muratune.serve.service import (
    DEFAULT_REQUEST_PIXELS,
    InvalidUpload,
    PixelLimits,
    StudyService,
    Upload,
    UploadTooLarge,
    screen_uploads,
)

DEFAULT_MAX_REQUEST_MB = 32.0
DEFAULT_MAX_FILES = 12
DEFAULT_BODY_IDLE_S = 10.0
DEFAULT_BODY_MIN_RATE = 32 * 1024
DEFAULT_BUFFERED_REQUESTS = 8  # request bodies of the largest size the ingress holds at once (then 503)
API_PATHS = frozenset({"/predict", "/cam", "/health", "/info"})


def _megabytes(mb: float) -> int:
    return int(mb * 1024 * 1024)


@dataclass(frozen=True)
class ServeLimits:
    """Request limits: body size (413), views per study (422), pixels per image and per request (413), how
    slowly a body may arrive (408): at most ``body_idle_s`` seconds of silence, and after that long at least
    ``body_min_rate`` bytes a second on average, and the bytes of all bodies held at once (503)."""

    max_request_bytes: int = _megabytes(DEFAULT_MAX_REQUEST_MB)
    max_files: int = DEFAULT_MAX_FILES
    max_pixels: int = MAX_PIXELS
    max_side: int = MAX_SIDE
    max_request_pixels: int = DEFAULT_REQUEST_PIXELS
    body_idle_s: float = DEFAULT_BODY_IDLE_S
    body_min_rate: int = DEFAULT_BODY_MIN_RATE
    max_buffered_bytes: int | None = None  # None: DEFAULT_BUFFERED_REQUESTS bodies of max_request_bytes

    @classmethod
    def from_options(
        cls,
        max_request_mb: float,
        max_files: int,
        max_pixels: int,
        max_request_pixels: int,
        body_idle_s: float,
        body_min_rate_kb: float,
        max_buffered_mb: float | None,
    ) -> ServeLimits:
        """The limits as `muratune serve` takes them: sizes in MB, the upload rate floor in KB/s.

        Raises:
            UserError: a size, time or rate that is not a finite number (``inf``, ``nan``), naming its option.
        """
        numbers = {"max_request_mb": max_request_mb, "body_idle_s": body_idle_s, "body_min_rate_kb": body_min_rate_kb}
        numbers["max_buffered_mb"] = 0.0 if max_buffered_mb is None else max_buffered_mb
        for name, value in numbers.items():
            if not math.isfinite(value):
                raise UserError(f"--{name.replace('_', '-')} {value}: must be a finite number")
        return cls(
            max_request_bytes=_megabytes(max_request_mb),
            max_files=max_files,
            max_pixels=max_pixels,
            max_request_pixels=max_request_pixels,
            body_idle_s=body_idle_s,
            body_min_rate=int(body_min_rate_kb * 1024),
            max_buffered_bytes=None if max_buffered_mb is None else _megabytes(max_buffered_mb),
        )

    @property
    def pixels(self) -> PixelLimits:
        """The pixel caps, as the study service applies them."""
        return PixelLimits(self.max_pixels, self.max_side, self.max_request_pixels)


def upload_error(err: InvalidUpload) -> HTTPException:
    """413 for an image above the pixel caps, 422 for any other bad upload."""
    return HTTPException(status_code=413 if isinstance(err, UploadTooLarge) else 422, detail=str(err))


# ------------------------------------------------------------------------------------------------ schema
ViewFiles = Annotated[list[UploadFile], File(description="one or more views (PNG/JPEG/DICOM) of one study")]
BodyPart = Annotated[str | None, Form(description="elbow, finger, forearm, hand, humerus, shoulder, wrist or auto")]


class Box(BaseModel):
    """A box on the view's pixels: ``x0 <= x < x1``, ``y0 <= y < y1``."""

    x0: int
    y0: int
    x1: int
    y1: int


class Point(BaseModel):
    """A pixel ``(x, y)``."""

    x: int
    y: int


class ViewResult(BaseModel):
    """One view: its ensemble probability and where its class activation map points."""

    filename: str
    prob: float
    width: int
    height: int
    box: Box | None
    peak: Point
    overlay_png: str | None = None


class StudyResult(BaseModel):
    """A study-level prediction: the mean of the views' probabilities against the body part's threshold."""

    prob: float
    label: int
    verdict: str
    threshold: float
    body_part: str | None
    body_part_source: str
    views: list[ViewResult]


# ------------------------------------------------------------------------------------------------ backends
class Backend(Protocol):
    """Where studies are analysed: in this process, or on Ray Serve replicas."""

    async def analyse(self, uploads: list[Upload], body_part: str | None, overlays: bool) -> dict: ...

    async def info(self) -> dict: ...


class LocalBackend:
    """A ``StudyService`` in this process; the model runs in a worker thread so the event loop stays free."""

    def __init__(self, service: StudyService):
        self.service = service

    async def analyse(self, uploads: list[Upload], body_part: str | None, overlays: bool) -> dict:
        from starlette.concurrency import run_in_threadpool

        try:
            return await run_in_threadpool(self.service.analyse, uploads, body_part, overlays)
        except InvalidUpload as err:
            raise upload_error(err) from None

    async def info(self) -> dict:
        return self.service.info()


# ------------------------------------------------------------------------------------------------ limits
class BodyStalled(Exception):
    """The client sends its body too slowly, or not at all."""


class BodiesOverBudget(Exception):
    """The request bodies held at once would pass ``max_buffered`` bytes."""


class BodySizeLimit:
    """ASGI middleware: read the whole body first; 413 above ``max_bytes`` (declared or streamed), 408 when it stalls.

    A body that is silent for ``idle_s`` seconds, or averages under ``min_rate`` bytes a second once ``idle_s`` has
    passed, is cut off, so a stalled upload holds a request slot for seconds, not for as long as its client likes.
    The bodies held at once (read, or in analysis) stay under ``max_buffered`` bytes: past it, 503.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        idle_s: float = DEFAULT_BODY_IDLE_S,
        min_rate: int = 0,
        max_buffered: int | None = None,
    ):
        self.app = app
        self.max_bytes = max_bytes
        self.idle_s = idle_s
        self.min_rate = min_rate
        # never below one whole body, or a request of the largest size could not be served at all
        self.max_buffered = max(max_bytes, max_buffered or DEFAULT_BUFFERED_REQUESTS * max_bytes)
        self.buffered = 0  # bytes of the bodies held now (one event loop: no lock needed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send)
            return
        held = [0]  # what this request adds to ``self.buffered``, given back when it is answered
        try:
            body = await self._read_body(receive, held)
            if body is None:
                await self._reject(send)
            else:
                await self.app(scope, _replay(body), send)
        except BodyStalled as err:
            await _answer(send, 408, str(err), close=True)
        except BodiesOverBudget as err:
            await _answer(send, 503, str(err), close=True)
        finally:
            self.buffered -= held[0]

    async def _read_body(self, receive: Receive, held: list[int]) -> bytes | None:
        """The whole body, or None as soon as it grows past the limit; ``held[0]`` counts its bytes.

        Raises:
            BodyStalled: the client fell silent, or below the rate floor.
            BodiesOverBudget: the bodies held at once would pass ``max_buffered``.
        """
        chunks, size, more, start = [], 0, True, time.monotonic()
        while more:
            try:
                message = await asyncio.wait_for(receive(), self.idle_s)
            except TimeoutError:
                raise BodyStalled(f"request body stalled: nothing received for {self.idle_s:g} s") from None
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return None
            if self.buffered + len(chunk) > self.max_buffered:
                raise BodiesOverBudget(
                    f"server busy: {self.max_buffered / (1024 * 1024):g} MB of uploads in hand; retry"
                )
            self.buffered += len(chunk)
            held[0] += len(chunk)
            chunks.append(chunk)
            more = message.get("more_body", False)
            late = time.monotonic() - start - self.idle_s
            if more and late > 0 and size < self.min_rate * late:
                raise BodyStalled(f"request body too slow: under {self.min_rate / 1024:g} KB/s")
        return b"".join(chunks)

    async def _reject(self, send: Send) -> None:
        limit_mb = self.max_bytes / (1024 * 1024)
        await _answer(send, 413, f"request body larger than the {limit_mb:g} MB limit")


async def _answer(send: Send, status: int, detail: str, close: bool = False) -> None:
    """Send a JSON error without reading the request (``Connection: close`` asks the server to hang up)."""
    headers = {"Connection": "close"} if close else None
    response = JSONResponse({"detail": detail}, status_code=status, headers=headers)
    await response({"type": "http"}, _no_receive, send)


def _replay(body: bytes) -> Receive:
    """A receive channel that yields ``body`` once, then waits as a live connection would."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


# ------------------------------------------------------------------------------------------------ app
def page_html() -> str:
    """The single upload page (static HTML, CSS and JS; no external resources)."""
    return resources.files("muratune.serve").joinpath("static/index.html").read_text(encoding="utf-8")


def add_guards(app: FastAPI, limits: ServeLimits, access: ServeAccess) -> None:
    """The middleware, added innermost first: body limits, the API key, the same-origin rule, the Host allow-list."""
    app.add_middleware(
        BodySizeLimit,
        max_bytes=limits.max_request_bytes,
        idle_s=limits.body_idle_s,
        min_rate=limits.body_min_rate,
        max_buffered=limits.max_buffered_bytes,
    )
    if access.api_key:
        app.add_middleware(ApiKeyGate, api_key=access.api_key, paths=API_PATHS)
    app.add_middleware(SameOriginPost)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=access.host_patterns(), www_redirect=False)


def create_app(backend: Backend, limits: ServeLimits | None = None, access: ServeAccess | None = None) -> FastAPI:
    """The FastAPI app: ``POST /predict``, ``POST /cam``, ``GET /health``, ``GET /info`` and the page at ``/``.

    Args:
        backend: where studies are analysed.
        limits: request limits (default ``ServeLimits()``).
        access: the Host allow-list and API key (default: loopback names, no key).
    """
    limits = limits or ServeLimits()
    access = access or ServeAccess()
    access.check()
    app = FastAPI(
        title="muratune",
        version=__version__,
        description="Study-level abnormality predictions with class activation maps for musculoskeletal "
        "radiographs. A research tool, not a diagnosis.",
    )
    add_guards(app, limits, access)
    page = page_html()

    async def read_uploads(files: list[UploadFile]) -> list[Upload]:
        if len(files) > limits.max_files:
            raise HTTPException(422, f"{len(files)} files: at most {limits.max_files} views per study")
        uploads = [Upload(f.filename or f"view{i + 1}", await f.read()) for i, f in enumerate(files)]
        try:
            screen_uploads(uploads, limits.pixels)  # here, before the bytes travel to a model replica
        except InvalidUpload as err:
            raise upload_error(err) from None
        return uploads

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    @app.get("/health")
    async def health() -> dict:
        """Liveness: the server answers."""
        return {"status": "ok"}

    @app.get("/info")
    async def info() -> dict:
        """The ensemble: members, version, weights, thresholds and CAM layers."""
        return await backend.info()

    @app.post("/predict", response_model=StudyResult, response_model_exclude_unset=True)
    async def predict(files: ViewFiles, body_part: BodyPart = None) -> dict:
        """Study probability, label and threshold, with each view's probability and CAM box and peak."""
        return await backend.analyse(await read_uploads(files), body_part, False)

    @app.post("/cam", response_model=StudyResult)
    async def cam(files: ViewFiles, body_part: BodyPart = None) -> dict:
        """As /predict, with each view's CAM overlay as a base64 PNG (``overlay_png``)."""
        return await backend.analyse(await read_uploads(files), body_part, True)

    return app
