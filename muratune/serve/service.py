"""StudyService: one study's uploaded views in, the ensemble's verdict, per-view probabilities and CAMs out."""

from __future__ import annotations

import base64
import io
import math
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from muratune import __version__
from muratune.body_parts import body_part_in_name, normalise_body_part
from muratune.cam.boxes import DEFAULT_THRESHOLD as BOX_THRESHOLD
from muratune.cam.boxes import Box, Localisation, localise
from muratune.cam.cam import DEFAULT_SHIFTS, EnsembleCam
from muratune.cam.overlay import overlay
from muratune.constants import BODY_PARTS
from muratune.data.images import (
    MAX_PIXELS,
    MAX_SIDE,
    ImageHeader,
    ImageReadError,
    ImageTooLarge,
    read_header,
    read_image,
)
from muratune.ensemble.load import default_predictor, load_ensemble
from muratune.ensemble.predictor import file_sha256
from muratune.errors import UserError
from muratune.layout import ENSEMBLE_FILE

_SUFFIX_RE = re.compile(r"^\.[A-Za-z0-9]{1,5}$")
# A request's views together: two images at the per-image cap (a study has 1-4 views of ~0.25 megapixels in MURA).
DEFAULT_REQUEST_PIXELS = 2 * MAX_PIXELS
# Views are drawn (CAM heatmap, box, overlay PNG) at most this long a side, so drawing costs at most this many pixels
# per view whatever the upload's size; boxes and peaks are mapped back onto the original pixels.
DISPLAY_SIDE = 2048


class InvalidUpload(UserError):
    """An upload that cannot be analysed (not an image, no files, unknown body part); the message says why."""


class UploadTooLarge(InvalidUpload):
    """An upload whose header declares more pixels than one image, or the request's views together, may have."""


@dataclass(frozen=True)
class PixelLimits:
    """Caps read from the image headers before anything is decoded: per image (pixels, side) and per request."""

    max_pixels: int = MAX_PIXELS
    max_side: int = MAX_SIDE
    max_request_pixels: int = DEFAULT_REQUEST_PIXELS


@dataclass(frozen=True)
class Upload:
    """One uploaded view: the client's file name (only used for display and body-part inference) and its bytes."""

    filename: str
    data: bytes


def screen_uploads(uploads: list[Upload], limits: PixelLimits) -> list[ImageHeader]:
    """Read every upload's format and size from its header, refusing any before a single pixel is decoded.

    Raises:
        UploadTooLarge: an image above the per-image caps, or the views together above the request's budget.
        InvalidUpload: a file that is not a PNG, JPEG or DICOM image (named).
    """
    headers, total = [], 0
    for upload in uploads:
        try:
            header = read_header(io.BytesIO(upload.data), upload.filename, limits.max_pixels, limits.max_side)
        except ImageTooLarge as err:
            raise UploadTooLarge(str(err)) from None
        except ImageReadError as err:
            raise InvalidUpload(str(err)) from None
        total += header.pixels
        if total > limits.max_request_pixels:
            raise UploadTooLarge(
                f"{upload.filename}: the study's views add up to more than {limits.max_request_pixels / 1e6:g} "
                "megapixels, the limit for one request"
            )
        headers.append(header)
    return headers


def upload_body_part(value: str | None) -> str | None:
    """The body part asked for in a request: ``XR_WRIST`` from ``wrist`` etc.; ``None`` for empty or ``auto``.

    Raises:
        InvalidUpload: not one of the seven MURA body parts.
    """
    if (value or "").strip().upper() in ("", "AUTO"):
        return None
    try:
        return normalise_body_part(str(value))
    except ValueError as err:
        raise InvalidUpload(f"body_part: {err} (or auto)") from None


def infer_upload_body_part(uploads: list[Upload]) -> str | None:
    """The body part named by the uploads' file names or paths (``.../XR_WRIST/...``), if they agree on one."""
    parts = {body_part_in_name(u.filename) for u in uploads} - {None}
    return parts.pop() if len(parts) == 1 else None


def png_base64(image: np.ndarray) -> str:
    """A BGR or gray uint8 image as base64-encoded PNG."""
    ok, encoded = cv2.imencode(".png", image)
    if not ok:  # pragma: no cover - cv2 only fails on invalid arrays
        raise RuntimeError("PNG encoding failed")
    return base64.b64encode(encoded.tobytes()).decode("ascii")


class StudyService:
    """A loaded ensemble and its CAM, answering one study at a time; uploads live only in a temporary folder."""

    def __init__(
        self,
        ensemble_dir: str | os.PathLike,
        device: str | None = None,
        box_threshold: float = BOX_THRESHOLD,
        cam_shifts: int = DEFAULT_SHIFTS,
        limits: PixelLimits | None = None,
    ):
        self.ensemble_dir = default_predictor(ensemble_dir)  # an experiment folder stands for its default
        self.limits = limits or PixelLimits()
        self.predictor = load_ensemble(self.ensemble_dir, device)
        self.cam = EnsembleCam.from_predictor(self.predictor, shifts=cam_shifts)
        self.box_threshold = box_threshold
        self._info = self._describe()
        # Grad-CAM hooks the shared models and runs backward: one study at a time per service (replicas scale out).
        self._lock = threading.Lock()

    def info(self) -> dict:
        """The ensemble's members, version, thresholds, calibration and CAM layers."""
        return self._info

    def _describe(self) -> dict:
        spec_file = self.ensemble_dir / ENSEMBLE_FILE
        layers = self.cam.describe()
        members = [
            {
                "name": m.name,
                "backbone": m.trial.get("config", {}).get("backbone", m.trial.get("backbone")),
                "image_size": m.image_size,
                "resize_mode": m.data_config["resize_mode"],
                "cam": layers[m.name],
            }
            for m in self.predictor.members
        ]
        return {
            "ensemble": self.ensemble_dir.name,
            "ensemble_sha256": file_sha256(spec_file) if spec_file.is_file() else None,
            "muratune_version": __version__,
            "members": members,
            "weights": {part: [float(w) for w in vec] for part, vec in self.predictor.weights.items()},
            "thresholds": self.predictor.thresholds,
            "threshold_default": self.predictor.threshold(None),
            "tta": self.predictor.tta,
            # the probabilities served are calibrated by this map (None: as the members average them)
            "calibration": None if self.predictor.calibration is None else self.predictor.calibration.model_dump(),
            "device": str(self.predictor.device),
            "body_parts": list(BODY_PARTS),
            "box_threshold": self.box_threshold,
        }

    def analyse(self, uploads: list[Upload], body_part: str | None = None, overlays: bool = False) -> dict:
        """Predict one study from its uploaded views, with each view's CAM box and peak (and overlay PNGs).

        Raises:
            InvalidUpload: no files, an unknown body part, or a file that is not a readable image (named);
                ``UploadTooLarge`` for images above the pixel caps (checked from the headers before decoding).
        """
        if not uploads:
            raise InvalidUpload("no images uploaded; send one or more views of one study as 'files'")
        part = upload_body_part(body_part) or infer_upload_body_part(uploads)
        headers = screen_uploads(uploads, self.limits)
        with tempfile.TemporaryDirectory(prefix="muratune-serve-") as tmp:
            paths = [_spill(Path(tmp), i, upload) for i, upload in enumerate(uploads)]
            # Decoding, the model and drawing are one study at a time: a replica holds one request's pixels at once.
            with self._lock:
                images = [_decode(path, upload.filename) for path, upload in zip(paths, uploads, strict=True)]
                study = self.predictor.predict_study(paths, part)
                cams = self.cam(images, [part] * len(images))
                views = [
                    self._view(upload, header, image, prob, cam.heatmap, overlays, part)
                    for upload, header, image, prob, cam in zip(
                        uploads, headers, images, study["view_probs"], cams, strict=True
                    )
                ]
        return {
            "prob": study["prob"],
            "label": study["label"],
            "verdict": "abnormal" if study["label"] else "normal",
            "threshold": study["threshold"],
            "body_part": part,
            "body_part_source": "given" if body_part and part else ("inferred" if part else "none"),
            "views": views,
        }

    def _view(
        self,
        upload: Upload,
        header: ImageHeader,
        image: np.ndarray,
        prob: float,
        heatmap: np.ndarray,
        with_png: bool,
        part: str | None,
    ) -> dict:
        """One view's result: box and peak on the original pixels; the overlay at the drawn size."""
        loc = localise(heatmap, self.box_threshold)
        view = {"filename": upload.filename, "prob": float(prob), "width": header.width, "height": header.height}
        view.update(on_original_pixels(loc, image.shape[:2], header))
        if with_png:
            caption = f"{part or 'body part unknown'}  p={prob:.3f}"
            view["overlay_png"] = png_base64(overlay(image, heatmap, loc, caption))
        return view


def fit_within(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` shrunk (area interpolation) so that its long side is at most ``side``; unchanged if it already is."""
    height, width = image.shape[:2]
    scale = side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def on_original_pixels(loc: Localisation, drawn: tuple[int, int], header: ImageHeader) -> dict:
    """A box and peak found on a view drawn at ``drawn`` (height, width), on the original ``header`` pixels."""
    scale_x, scale_y = header.width / drawn[1], header.height / drawn[0]
    if scale_x == scale_y == 1:
        return loc.to_dict()
    box = loc.box
    if box is not None:
        box = Box(
            math.floor(box.x0 * scale_x),
            math.floor(box.y0 * scale_y),
            min(header.width, math.ceil(box.x1 * scale_x)),
            min(header.height, math.ceil(box.y1 * scale_y)),
        )
    x, y = loc.peak
    peak = (min(header.width - 1, int((x + 0.5) * scale_x)), min(header.height - 1, int((y + 0.5) * scale_y)))
    return Localisation(box, peak).to_dict()


def _spill(folder: Path, index: int, upload: Upload) -> Path:
    """Write one upload into the request's temporary folder under a server-chosen name (never the client's)."""
    suffix = PurePosixPath(upload.filename.replace("\\", "/")).suffix
    path = folder / f"view{index + 1}{suffix if _SUFFIX_RE.match(suffix) else '.img'}"
    path.write_bytes(upload.data)
    return path


def _decode(path: Path, filename: str) -> np.ndarray:
    """Decode a spilled upload at most ``DISPLAY_SIDE`` a side, naming the client's file when it is not an image."""
    try:
        # max_side = half: read_image reduces by an integer factor only above twice it, to 1-2x DISPLAY_SIDE here.
        return fit_within(read_image(path, max_side=DISPLAY_SIDE // 2), DISPLAY_SIDE)
    except ImageReadError as err:
        reason = str(err).replace(str(path), "").lstrip(": ").strip() or "not a readable image"
        raise (UploadTooLarge if isinstance(err, ImageTooLarge) else InvalidUpload)(f"{filename}: {reason}") from None
