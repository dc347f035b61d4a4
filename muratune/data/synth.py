"""Synthetic radiographs in the exact MURA v1.1 layout, with planted findings and their boxes."""

from __future__ import annotations

import functools
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist

import cv2
import numpy as np
from tqdm import tqdm

from muratune.constants import BODY_PARTS, TRAIN, VALID
from muratune.errors import UserError
from muratune.fileio import atomic_dir

ROOT_NAME = "MURA-v1.1"
BOXES_CSV = "boxes.csv"
BOXES_HEADER = "image_path,x0,y0,x1,y1,kind"
FINDING_KINDS: tuple[str, ...] = ("fracture", "hardware", "lesion")
# Named difficulties as finding strengths (1 = easiest, largest and most contrasted findings).
DIFFICULTIES: dict[str, float] = {"easy": 1.0, "medium": 0.6, "hard": 0.3}

# Studies per body part as (normal, abnormal), from Table 1 of the MURA paper (Rajpurkar et al., 2017).
MURA_STUDY_COUNTS: dict[str, dict[str, tuple[int, int]]] = {
    TRAIN: {
        "XR_ELBOW": (1094, 660),
        "XR_FINGER": (1280, 655),
        "XR_FOREARM": (590, 287),
        "XR_HAND": (1497, 521),
        "XR_HUMERUS": (321, 271),
        "XR_SHOULDER": (1364, 1457),
        "XR_WRIST": (2134, 1326),
    },
    VALID: {
        "XR_ELBOW": (92, 66),
        "XR_FINGER": (92, 83),
        "XR_FOREARM": (69, 64),
        "XR_HAND": (101, 66),
        "XR_HUMERUS": (68, 67),
        "XR_SHOULDER": (99, 95),
        "XR_WRIST": (140, 97),
    },
}
VIEW_COUNTS, VIEW_WEIGHTS = (1, 2, 3, 4), (0.12, 0.45, 0.33, 0.10)
STUDIES_PER_PATIENT, PATIENT_WEIGHTS = (1, 2, 3), (0.75, 0.18, 0.07)
KIND_WEIGHTS = (0.45, 0.25, 0.30)  # fracture, hardware, lesion
RGB_FRACTION = 0.1
NOISE_STREAM = 0x4015E  # an image's noise comes from the generator seeded (dataset seed, image index, NOISE_STREAM)
# PNG encoding, measured on these noisy images: the Average filter alone (libpng otherwise tries all five per row)
# and, for grayscale, Huffman-only deflate are 3x faster than plain zlib level 1 and give smaller files. Three-channel
# images keep LZ77, which finds the repeated gray bytes (Huffman-only would make them 70% larger).
# cv2 before 4.11 has no filter flag and keeps its default filters.
_PNG_FILTER = [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_AVG] if hasattr(cv2, "IMWRITE_PNG_FILTER") else []
PNG_PARAMS_GRAY = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY]
PNG_PARAMS_GRAY += _PNG_FILTER
PNG_PARAMS_RGB = [cv2.IMWRITE_PNG_COMPRESSION, 1, *_PNG_FILTER]


# ------------------------------------------------------------------------------------------------ plan
@dataclass(frozen=True)
class ImageSpec:
    """One image to draw: where it goes, what it shows, and the seed that fixes its pixels."""

    index: int
    image_path: str
    body_part: str
    finding: str | None
    rgb: bool


@dataclass(frozen=True)
class StudySpec:
    """One study of the plan."""

    split: str
    body_part: str
    patient_id: str
    study_path: str
    label: int
    images: tuple[ImageSpec, ...]


@dataclass
class SynthSummary:
    """What `generate_dataset` wrote, printed as a short human summary."""

    root: Path
    seed: int
    strength: float
    studies: dict[str, int] = field(default_factory=dict)
    abnormal: dict[str, int] = field(default_factory=dict)
    images: dict[str, int] = field(default_factory=dict)
    boxes: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        total = sum(self.images.values())
        lines = [f"Wrote a synthetic MURA dataset to {self.root} (seed {self.seed}, difficulty {self.strength:g})"]
        for split in (TRAIN, VALID):
            n = self.studies.get(split, 0)
            rate = self.abnormal.get(split, 0) / n if n else 0.0
            lines.append(f"  {split:5s}: {n:6d} studies ({rate:6.1%} abnormal), {self.images.get(split, 0):6d} images")
        speed = total / self.seconds if self.seconds > 0 else float("inf")
        lines.append(
            f"  {self.boxes} findings in {BOXES_CSV}; {total} images in {self.seconds:.1f} s ({speed:.0f} images/s)"
        )
        return "\n".join(lines)


def parse_difficulty(difficulty: str | float) -> float:
    """Turn ``easy``/``medium``/``hard`` or a number in (0, 1] into a finding strength (1 = easiest).

    Raises:
        UserError: the value is neither a known name nor a number in (0, 1].
    """
    if isinstance(difficulty, str) and difficulty.strip().lower() in DIFFICULTIES:
        return DIFFICULTIES[difficulty.strip().lower()]
    try:
        value = float(difficulty)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 < value <= 1.0:  # also rejects NaN
        names = ", ".join(DIFFICULTIES)
        raise UserError(f"--difficulty {difficulty!r} is unknown; choose one of {names}, or a number in (0, 1]")
    return value


def _allocate(total: int, weights: Sequence[float], minimum: int = 0) -> list[int]:
    """Split ``total`` into integer parts proportional to ``weights`` (largest remainder), each at least ``minimum``."""
    if total < minimum * len(weights):
        minimum = 0
    rest = total - minimum * len(weights)
    w = np.asarray(weights, dtype=np.float64)
    exact = rest * w / w.sum()
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: rest - counts.sum()]] += 1
    return [int(c) + minimum for c in counts]


def _split_cells(split: str, n: int) -> dict[tuple[str, int], int]:
    """Number of studies per (body part, label) in one split, following the MURA proportions."""
    table = MURA_STUDY_COUNTS[split]
    keys = [(part, label) for part in BODY_PARTS for label in (0, 1)]
    weights = [table[part][label] for part, label in keys]
    # At least one study per cell once there is room, so every body part has both labels.
    return dict(zip(keys, _allocate(n, weights, minimum=1 if n >= len(keys) else 0), strict=True))


def _finding_views(rng: np.random.Generator, n_views: int, strength: float) -> list[bool]:
    """Which views of an abnormal study show the finding: at least one, more often at easier settings."""
    shown = list(rng.random(n_views) < 0.25 + 0.7 * strength)
    if not any(shown):
        shown[int(rng.integers(n_views))] = True
    return shown


def plan_dataset(studies: int, seed: int, strength: float = 1.0, valid_fraction: float = 0.1) -> list[StudySpec]:
    """Decide every study, patient and image of the dataset, without drawing anything.

    Patients belong to one split and one body part; study numbers restart per patient and image numbers
    start at 1, as in MURA.

    Args:
        studies: number of studies over both splits.
        seed: random seed.
        strength: finding strength from `parse_difficulty` (changes how many views show a finding).
        valid_fraction: share of the studies that go to the ``valid`` split.

    Returns:
        The studies in the order their rows are written to the CSVs.
    """
    rng = np.random.default_rng([seed, 0x5EED])
    n_valid = round(studies * valid_fraction)
    plan: list[StudySpec] = []
    patient_number = 0
    image_index = 0
    for split, n_split in ((TRAIN, studies - n_valid), (VALID, n_valid)):
        cells = _split_cells(split, n_split)
        for part in BODY_PARTS:
            labels = [0] * cells[(part, 0)] + [1] * cells[(part, 1)]
            rng.shuffle(labels)
            while labels:
                per_patient = int(rng.choice(STUDIES_PER_PATIENT, p=PATIENT_WEIGHTS))
                patient_labels, labels = labels[:per_patient], labels[per_patient:]
                patient_number += 1
                patient_id = f"{patient_number:05d}"
                for study_number, label in enumerate(patient_labels, start=1):
                    study_path = (
                        f"{ROOT_NAME}/{split}/{part}/patient{patient_id}/"
                        f"study{study_number}_{'positive' if label else 'negative'}/"
                    )
                    n_views = int(rng.choice(VIEW_COUNTS, p=VIEW_WEIGHTS))
                    kind = str(rng.choice(FINDING_KINDS, p=KIND_WEIGHTS)) if label else None
                    shown = _finding_views(rng, n_views, strength) if label else [False] * n_views
                    images = []
                    for view in range(n_views):
                        images.append(
                            ImageSpec(
                                index=image_index,
                                image_path=f"{study_path}image{view + 1}.png",
                                body_part=part,
                                finding=kind if shown[view] else None,
                                rgb=bool(rng.random() < RGB_FRACTION),
                            )
                        )
                        image_index += 1
                    plan.append(StudySpec(split, part, patient_id, study_path, label, tuple(images)))
    return plan


# ------------------------------------------------------------------------------------------------ anatomy
@dataclass(frozen=True)
class _Bone:
    """A tubular bone from ``a`` to ``b`` with widths ``wa``/``wb``, in template units; ``long`` bones take findings."""

    a: tuple[float, float]
    b: tuple[float, float]
    wa: float
    wb: float
    long: bool = True


@dataclass(frozen=True)
class _Blob:
    """A round bone (head, condyle, carpal) as an ellipse with semi-axes ``ax``/``ay`` rotated by ``angle`` degrees."""

    c: tuple[float, float]
    ax: float
    ay: float
    angle: float = 0.0


_Part = list  # a list of _Bone and _Blob in template units: the short image side spans about [-1, 1]


def _rotate_about(p: tuple[float, float], pivot: tuple[float, float], degrees: float) -> tuple[float, float]:
    t = math.radians(degrees)
    x, y = p[0] - pivot[0], p[1] - pivot[1]
    return (pivot[0] + x * math.cos(t) - y * math.sin(t), pivot[1] + x * math.sin(t) + y * math.cos(t))


def _chain(
    start: tuple[float, float],
    angle: float,
    lengths: Sequence[float],
    widths: Sequence[float],
    rng: np.random.Generator,
    flex: float = 8.0,
    gap: float = 0.05,
) -> list[_Bone]:
    """Bones laid end to end from ``start`` in direction ``angle`` (degrees, 0 = up), bending a little at each joint."""
    bones, (x, y) = [], start
    for length, width in zip(lengths, widths, strict=True):
        t = math.radians(angle)
        end = (x + length * math.sin(t), y - length * math.cos(t))
        bones.append(_Bone((x, y), end, width, width * 0.85))
        x, y = end[0] + gap * math.sin(t), end[1] - gap * math.cos(t)
        angle += float(rng.uniform(-flex, flex))
    return bones


def _carpals(center: tuple[float, float], radius: float, rng: np.random.Generator) -> list[_Blob]:
    """Eight carpal bones in two rows of four around ``center``."""
    blobs = []
    for row, dy in enumerate((-0.55, 0.55)):
        for i in range(4):
            dx = (i - 1.5) * 0.95 + (0.2 if row else 0.0)
            c = (center[0] + dx * radius * 1.05, center[1] + dy * radius * 1.4)
            s = float(rng.uniform(0.8, 1.15))
            blobs.append(_Blob(c, radius * 0.55 * s, radius * 0.6 * s, float(rng.uniform(0, 180))))
    return blobs


def _forearm(rng: np.random.Generator) -> _Part:
    d = float(rng.uniform(-0.06, 0.06))
    return [
        _Bone((-0.22, -1.45), (-0.26 + d, 1.45), 0.14, 0.2),
        _Bone((0.2, -1.45), (0.18 + d, 1.45), 0.18, 0.12),
        _Blob((-0.27 + d, 1.5), 0.17, 0.09),
        _Blob((0.2, -1.5), 0.14, 0.12),
    ]


def _humerus(rng: np.random.Generator) -> _Part:
    return [
        _Bone((0.0, -1.05), (0.03, 1.05), 0.24, 0.22),
        _Blob((0.06, -1.2), 0.32, 0.28),
        _Blob((0.03, 1.22), 0.4, 0.14),
        _Bone((-0.7, -1.6), (-0.45, -1.05), 0.3, 0.18, long=False),
    ]


def _shoulder(rng: np.random.Generator) -> _Part:
    return [
        _Bone((-1.0, 1.5), (-0.45, 0.15), 0.2, 0.4, long=False),  # scapular body
        _Bone((0.2, 0.25), (0.32, 1.7), 0.3, 0.26),  # humeral shaft
        _Blob((0.15, 0.0), 0.36, 0.36),  # humeral head
        _Blob((-0.35, 0.05), 0.12, 0.3),  # glenoid
        _Bone((-1.4, -0.72), (0.55, -0.62), 0.14, 0.12),  # clavicle
        _Bone((-0.3, -0.48), (0.35, -0.42), 0.12, 0.1, long=False),  # acromion
    ]


def _elbow(rng: np.random.Generator) -> _Part:
    bend = float(rng.uniform(-35, 5))
    pivot = (0.0, 0.05)
    bones: _Part = [_Bone((0.0, -1.6), (0.0, -0.15), 0.28, 0.36), _Blob((0.0, -0.08), 0.42, 0.16)]
    forearm = [
        _Bone((-0.16, 0.18), (-0.22, 1.6), 0.16, 0.18),
        _Bone((0.15, 0.12), (0.18, 1.6), 0.2, 0.13),
        _Blob((0.17, 0.06), 0.15, 0.12),
        _Blob((-0.16, 0.16), 0.13, 0.08),
    ]
    for item in forearm:
        if isinstance(item, _Bone):
            bones.append(
                _Bone(_rotate_about(item.a, pivot, bend), _rotate_about(item.b, pivot, bend), item.wa, item.wb)
            )
        else:
            bones.append(_Blob(_rotate_about(item.c, pivot, bend), item.ax, item.ay, item.angle + bend))
    return bones


def _finger(rng: np.random.Generator) -> _Part:
    bones: _Part = [_Bone((0.0, 1.7), (0.0, 1.0), 0.26, 0.26)]
    bones += _chain((0.0, 0.93), float(rng.uniform(-6, 6)), (0.85, 0.55, 0.38), (0.25, 0.21, 0.17), rng)
    return bones


def _hand(rng: np.random.Generator) -> _Part:
    bones: _Part = [_Bone((-0.2, 1.9), (-0.16, 1.12), 0.3, 0.32), _Bone((0.25, 1.9), (0.22, 1.15), 0.18, 0.16)]
    bones += _carpals((0.0, 0.86), 0.11, rng)
    for i, x in enumerate((-0.3, -0.12, 0.05, 0.22)):
        angle = -12 + i * 8 + float(rng.uniform(-3, 3))
        base = (x, 0.62)
        bones += _chain(base, angle, (0.6, 0.4, 0.25, 0.17), (0.1, 0.09, 0.08, 0.07), rng, flex=5, gap=0.04)
    bones += _chain((-0.42, 0.72), -40 + float(rng.uniform(-8, 8)), (0.42, 0.32, 0.22), (0.11, 0.1, 0.08), rng)
    return bones


def _wrist(rng: np.random.Generator) -> _Part:
    bones: _Part = [_Bone((-0.25, 1.7), (-0.2, 0.5), 0.42, 0.52), _Bone((0.38, 1.7), (0.36, 0.55), 0.22, 0.22)]
    bones += _carpals((0.05, 0.0), 0.19, rng)
    for i, x in enumerate((-0.55, -0.28, -0.02, 0.22, 0.45)):
        angle = -20 + i * 9 if i else -35
        bones.append(_Bone((x, -0.48), _rotate_about((x, -1.7), (x, -0.48), angle), 0.17, 0.14))
    return bones


_TEMPLATES = {
    "XR_ELBOW": _elbow,
    "XR_FINGER": _finger,
    "XR_FOREARM": _forearm,
    "XR_HAND": _hand,
    "XR_HUMERUS": _humerus,
    "XR_SHOULDER": _shoulder,
    "XR_WRIST": _wrist,
}


# ------------------------------------------------------------------------------------------------ geometry
@dataclass(frozen=True)
class _Pose:
    """Template units to pixels: ``pixel = scale * R(angle) @ (mirror * p) + (cx, cy)``."""

    scale: float
    angle: float
    mirror: float
    cx: float
    cy: float

    @functools.cached_property
    def _affine(self) -> tuple[np.ndarray, np.ndarray]:
        t = math.radians(self.angle)
        rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]]) * self.scale
        return (rot * np.array([self.mirror, 1.0])).T, np.array([self.cx, self.cy])

    def apply(self, pts: np.ndarray) -> np.ndarray:
        """Map an (N, 2) array of template points to pixel coordinates."""
        matrix, offset = self._affine
        return pts @ matrix + offset


# Shapes are built with plain floats and one small matrix product each: an image has about 35 of them, and numpy's
# per-call overhead on 2-vectors used to cost more than filling them.
@functools.cache
def _unit_circle(n: int) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _ellipse(c: Sequence[float], ax: float, ay: float, angle: float = 0.0, n: int = 28) -> np.ndarray:
    r = math.radians(angle)
    cos, sin = math.cos(r), math.sin(r)
    return _unit_circle(n) @ np.array([[ax * cos, ax * sin], [-ay * sin, ay * cos]]) + np.asarray(c, np.float64)


def _axes(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Unit vector along a->b, its normal, and the length."""
    dx, dy = float(b[0] - a[0]), float(b[1] - a[1])
    length = math.hypot(dx, dy) or 1e-6
    ux, uy = dx / length, dy / length
    return np.array([ux, uy]), np.array([-uy, ux]), length


def _quad(a: np.ndarray, b: np.ndarray, wa: float, wb: float, shift_b: float = 0.0) -> np.ndarray:
    """Corner points of a tapered shaft from ``a`` to ``b``; ``shift_b`` moves the ``a`` end sideways."""
    ax, ay, bx, by = float(a[0]), float(a[1]), float(b[0]), float(b[1])
    length = math.hypot(bx - ax, by - ay) or 1e-6
    nx, ny = (ay - by) / length, (bx - ax) / length
    ax, ay = ax + nx * shift_b, ay + ny * shift_b
    ha, hb = wa / 2, wb / 2
    return np.array(
        [
            [ax + nx * ha, ay + ny * ha],
            [bx + nx * hb, by + ny * hb],
            [bx - nx * hb, by - ny * hb],
            [ax - nx * ha, ay - ny * ha],
        ]
    )


def _fill(layer: np.ndarray, pts: np.ndarray, value: float) -> None:
    cv2.fillPoly(layer, [(pts * 16).round().astype(np.int32)], float(value), lineType=cv2.LINE_8, shift=4)


def _tissue_kernel(long_side: int) -> int:
    """Side of the box blur that softens the soft tissue, in full-resolution pixels."""
    return max(3, int(long_side / 20) | 1)


def _tissue_factor(long_side: int) -> int:
    """Downscale of the soft-tissue layer: its box blur still spans about 6 of its pixels."""
    return max(1, _tissue_kernel(long_side) // 6)


class _Scratch(threading.local):
    """Full-resolution work arrays reused from image to image, one set per thread.

    Fresh multi-megabyte arrays cost hundreds of page faults per image (about 1.5 ms of system time), as glibc hands
    freed memory of this size back to the kernel.
    """

    def __init__(self) -> None:
        self.buffers: dict[str, np.ndarray] = {}

    def array(self, name: str, shape: tuple[int, int], dtype: type[np.generic]) -> np.ndarray:
        """A contiguous ``shape`` array of ``dtype`` with undefined contents, valid until the next call for ``name``."""
        size = shape[0] * shape[1]
        buffer = self.buffers.get(name)
        if buffer is None or buffer.size < size or buffer.dtype != dtype:
            buffer = self.buffers[name] = np.empty(size, dtype)
        return buffer[:size].reshape(shape)


_SCRATCH = _Scratch()


def _box_kernel(width: float) -> np.ndarray:
    """A centred box ``width`` pixels wide (any real width) sampled on the pixel grid, as a kernel summing to 1."""
    half = math.ceil((width - 1) / 2)
    taps = np.arange(-half, half + 1)
    overlap = np.clip(np.minimum(taps + 0.5, width / 2) - np.maximum(taps - 0.5, -width / 2), 0.0, 1.0)
    return (overlap / overlap.sum()).astype(np.float32)


# ------------------------------------------------------------------------------------------------ drawing
@dataclass
class _Canvas:
    """The layers of one image being drawn, and the pose mapping template units to its pixels."""

    pose: _Pose
    tissue: np.ndarray
    bone: np.ndarray
    cortex: float
    medulla: float

    @functools.cached_property
    def _tissue_map(self) -> tuple[np.ndarray, float]:
        """Pixel scale of the low-resolution tissue layer, and the inset (template units) that keeps its shapes' area.

        fillPoly covers every pixel whose centre is within half a pixel of a shape, so shapes grow by half a pixel
        per side: half a *low-resolution* pixel here. The inset shrinks them back to the full-resolution growth.
        """
        (th, tw), (h, w) = self.tissue.shape, self.bone.shape
        return np.array([tw / w, th / h]), (w / tw - 1.0) / (2.0 * self.pose.scale)

    def soft_tissue(self, pts: np.ndarray) -> None:
        """Fill template points into the soft-tissue layer, which is drawn at low resolution (it is blurred anyway)."""
        scale, _ = self._tissue_map
        # Pixel centres map as in cv2.resize, so the upsampled layer lines up with the bone layer.
        _fill(self.tissue, (self.pose.apply(pts) + 0.5) * scale - 0.5, 1.0)

    def shaft(self, a: np.ndarray, b: np.ndarray, wa: float, wb: float, shift: float = 0.0) -> None:
        """Draw a bone shaft with a bright cortex around a darker medulla, and its soft tissue."""
        u, _, length = _axes(a, b)
        _, soft = self._tissue_map
        end = min(soft, 0.25 * length)
        self.soft_tissue(
            _quad(a + u * end, b - u * end, max(wa * 2.6 - 2 * soft, wa), max(wb * 2.6 - 2 * soft, wb), shift)
        )
        _fill(self.bone, self.pose.apply(_quad(a, b, wa, wb, shift)), self.cortex)
        inset = min(0.15 * length, 0.5 * min(wa, wb))
        _fill(
            self.bone, self.pose.apply(_quad(a + u * inset, b - u * inset, wa * 0.55, wb * 0.55, shift)), self.medulla
        )

    def blob(self, c: Sequence[float], ax: float, ay: float, angle: float) -> None:
        """Draw a round bone with its cortex rim."""
        _, soft = self._tissue_map
        self.soft_tissue(_ellipse(c, max(ax * 1.9 - soft, ax), max(ay * 1.9 - soft, ay), angle))
        _fill(self.bone, self.pose.apply(_ellipse(c, ax, ay, angle)), self.cortex)
        _fill(self.bone, self.pose.apply(_ellipse(c, ax * 0.75, ay * 0.75, angle)), self.medulla)

    def box(self, pts: np.ndarray) -> tuple[int, int, int, int]:
        """Pixel bounding box of template points, clipped to the image."""
        p = self.pose.apply(pts)
        h, w = self.bone.shape
        x0, y0 = np.floor(p.min(axis=0)).astype(int)
        x1, y1 = np.ceil(p.max(axis=0)).astype(int)
        return max(0, int(x0)), max(0, int(y0)), min(w, int(x1)), min(h, int(y1))


def _size_factor(strength: float) -> float:
    """Finding size relative to the easiest setting: falls quickly with strength, down to 0.15."""
    return 0.15 + 0.85 * strength * strength


def _draw_fracture(cv: _Canvas, bone: _Bone, t: float, s: float, rng: np.random.Generator) -> np.ndarray:
    """Draw ``bone`` broken at ``t`` with a gap and a sideways shift of the fragment; return the finding's outline."""
    a, b = np.array(bone.a), np.array(bone.b)
    u, n, length = _axes(a, b)
    w = bone.wa + (bone.wb - bone.wa) * t
    f = _size_factor(s)
    gap = 0.25 * f * (0.7 + 0.3 * rng.random())
    offset = ((0.2 + 1.0 * f) * w + 0.15 * f) * float(rng.choice([-1.0, 1.0]))
    c = a + u * length * t
    cut1, cut2 = c - u * gap / 2, c + u * gap / 2
    cv.shaft(a, cut1, bone.wa, w, 0.0)
    cv.shaft(cut2, b, w, bone.wb, offset)
    margin = 0.25 * w
    return np.array(
        [
            cut1 - u * margin + n * w / 2,
            cut1 - u * margin - n * w / 2,
            cut2 + u * margin + n * (offset + w / 2),
            cut2 + u * margin + n * (offset - w / 2),
        ]
    )


def _draw_hardware(cv: _Canvas, bone: _Bone, t: float, s: float, rng: np.random.Generator) -> np.ndarray:
    """Draw a bright plate along the bone with screws across it; return the finding's outline."""
    a, b = np.array(bone.a), np.array(bone.b)
    u, n, length = _axes(a, b)
    w = bone.wa + (bone.wb - bone.wa) * t
    f = _size_factor(s)
    plate_len = min(1.0 * f * (0.8 + 0.4 * rng.random()), 0.8 * length)
    plate_w = 0.14 * f
    side = float(rng.choice([-1.0, 1.0])) * w * 0.5
    c = a + u * length * t + n * side
    p0, p1 = c - u * plate_len / 2, c + u * plate_len / 2
    metal = cv.cortex + 0.15 + 0.65 * s  # saturates at easy settings, where bone does not
    _fill(cv.bone, cv.pose.apply(_quad(p0, p1, plate_w, plate_w)), metal)
    n_screws = 2 + int(round(3 * s * rng.random()))
    screw_w = 0.06 * f
    outline = [p0 + n * plate_w, p0 - n * plate_w, p1 + n * plate_w, p1 - n * plate_w]
    for k in range(n_screws):
        q = p0 + u * plate_len * (k + 0.5) / n_screws
        tip = q - n * np.sign(side) * (w + 0.02)
        _fill(cv.bone, cv.pose.apply(_quad(q, tip, screw_w, screw_w * 0.7)), metal)
        _fill(cv.bone, cv.pose.apply(_ellipse(q, screw_w * 1.3, screw_w * 1.3, 0.0, n=12)), metal)
        outline.append(tip)
    return np.array(outline)


def _draw_lesion(cv: _Canvas, bone: _Bone, t: float, s: float, rng: np.random.Generator) -> np.ndarray:
    """Draw a dark lytic oval with a thin rim inside the bone; return the finding's outline."""
    a, b = np.array(bone.a), np.array(bone.b)
    u, _, length = _axes(a, b)
    w = bone.wa + (bone.wb - bone.wa) * t
    c = a + u * length * t
    f = _size_factor(s)
    along = min(0.4 * f * (0.8 + 0.4 * rng.random()), 0.4 * length)
    across = max(0.3 * w, 0.25 * f)
    angle = math.degrees(math.atan2(u[1], u[0]))
    rim = 0.01 + 0.02 * f
    _fill(cv.bone, cv.pose.apply(_ellipse(c, along + rim, across + rim, angle)), cv.cortex)
    _fill(cv.bone, cv.pose.apply(_ellipse(c, along, across, angle)), cv.medulla * 0.8 * (1.0 - s))
    return _ellipse(c, along + rim, across + rim, angle, n=16)


_FINDINGS = {"fracture": _draw_fracture, "hardware": _draw_hardware, "lesion": _draw_lesion}


def _pick_site(cv: _Canvas, bones: list[_Bone], rng: np.random.Generator) -> tuple[int, float]:
    """Choose a long bone and a position along it whose pixel lies well inside the image."""
    h, w = cv.bone.shape
    weights = np.array([math.dist(b.a, b.b) for b in bones])
    best = (int(np.argmax(weights)), 0.5)
    for _ in range(40):
        i = int(rng.choice(len(bones), p=weights / weights.sum()))
        t = float(rng.uniform(0.25, 0.75))
        p = cv.pose.apply((np.array(bones[i].a) + t * (np.array(bones[i].b) - np.array(bones[i].a)))[None])[0]
        if 0.12 * w < p[0] < 0.88 * w and 0.12 * h < p[1] < 0.88 * h:
            return i, t
    return best


def _image_size(rng: np.random.Generator, long_side: int, body_part: str) -> tuple[int, int]:
    """Height and width: long side within +-15% of ``long_side``, mostly portrait."""
    long = int(round(long_side * rng.uniform(0.85, 1.15)))
    short = int(round(long * rng.uniform(0.68, 1.0)))
    portrait = rng.random() < (0.35 if body_part == "XR_SHOULDER" else 0.8)
    return (long, short) if portrait else (short, long)


def render_image(
    body_part: str, finding: str | None, seed: Sequence[int], strength: float = 1.0, long_side: int = 512
) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Draw one radiograph-like image.

    Args:
        body_part: one of `BODY_PARTS`; chooses the anatomy template.
        finding: ``fracture``, ``hardware``, ``lesion`` or None for a normal image.
        seed: entropy for this image alone (e.g. ``(dataset_seed, image_index)``).
        strength: finding strength in (0, 1]; 1 gives the largest, most contrasted findings.
        long_side: approximate long side in pixels.

    Returns:
        The 2-D uint8 image and the boxes ``(x0, y0, x1, y1)`` of its findings in pixel coordinates.
    """
    rng = np.random.default_rng(list(seed))
    h, w = _image_size(rng, long_side, body_part)
    items = _TEMPLATES[body_part](rng)
    base = 90.0 if w > h and body_part != "XR_SHOULDER" else 0.0
    pose = _Pose(
        scale=0.5 * min(h, w) * float(rng.uniform(0.8, 1.05)),
        angle=base + float(rng.uniform(-20, 20)),
        mirror=float(rng.choice([-1.0, 1.0])),
        cx=w / 2 + float(rng.uniform(-0.08, 0.08)) * w,
        cy=h / 2 + float(rng.uniform(-0.08, 0.08)) * h,
    )
    cortex = float(rng.uniform(0.34, 0.46))
    f = _tissue_factor(long_side)
    tissue = np.zeros((-(-h // f), -(-w // f)), np.float32)
    bone = _SCRATCH.array("bone", (h, w), np.float32)
    bone.fill(0.0)
    cv = _Canvas(pose, tissue, bone, cortex, cortex * 0.62)
    longs = [it for it in items if isinstance(it, _Bone) and it.long]
    site = _pick_site(cv, longs, rng) if finding else None
    outlines = []
    for item in items:
        if isinstance(item, _Blob):
            cv.blob(item.c, item.ax, item.ay, item.angle)
        elif site is not None and finding == "fracture" and item is longs[site[0]]:
            outlines.append(_draw_fracture(cv, item, site[1], strength, rng))
        else:
            cv.shaft(np.array(item.a), np.array(item.b), item.wa, item.wb)
    if site is not None and finding != "fracture":
        outlines.append(_FINDINGS[str(finding)](cv, longs[site[0]], site[1], strength, rng))
    boxes = [cv.box(o) for o in outlines]
    # Noise has its own stream, so the shapes and exposure of a seed do not depend on how noise is drawn.
    return _expose(cv, rng, np.random.default_rng([*seed, NOISE_STREAM]), long_side), boxes


@functools.cache
def _gaussian_levels() -> np.ndarray:
    """256 equiprobable quantiles of a unit Gaussian: indexed by random bytes, they are fast Gaussian-like noise."""
    z = np.array([NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256)], np.float32)
    return z / z.std()


def _expose(cv: _Canvas, rng: np.random.Generator, noise_rng: np.random.Generator, long_side: int) -> np.ndarray:
    """Blur, combine and expose the layers, burn in a side marker, add noise and quantise to uint8.

    In effect ``gamma(gain * (offset + tissue_gain * tissue + bone + ramp) + noise)``, with each full-resolution
    float image touched as few times as possible: memory traffic, not arithmetic, is what costs here.
    """
    h, w = cv.bone.shape
    (th, tw), k = cv.tissue.shape, _tissue_kernel(long_side)
    offset, tissue_gain = float(rng.uniform(0.02, 0.08)), float(rng.uniform(0.12, 0.22))
    # Heel effect: a gentle exposure gradient across the film, along the height for about half the images.
    along_height = rng.random() < 0.5 and h != w
    heel = float(rng.uniform(0, 0.08))
    gain = float(rng.uniform(0.85, 1.15))
    # The soft tissue's box blur, done at low resolution with a kernel of the same physical width. The heel ramp is
    # added there too: bilinear upsampling keeps a linear ramp linear, so it costs no full-resolution pass.
    tissue = cv2.sepFilter2D(cv.tissue, -1, _box_kernel(k * tw / w), _box_kernel(k * th / h))
    n, small = (h, th) if along_height else (w, tw)
    centres = (np.arange(small, dtype=np.float32) + 0.5) * (n / small) - 0.5  # full-resolution pixel coordinates
    ramp = (-1.0 + 2.0 * centres / max(n - 1, 1)) * (heel / tissue_gain)
    tissue += ramp[:, None] if along_height else ramp[None, :]
    tissue = cv2.resize(tissue, (w, h), _SCRATCH.array("tissue", (h, w), np.float32), interpolation=cv2.INTER_LINEAR)
    sigma = max(0.6, long_side / 450)
    taps = 2 * math.ceil(3 * sigma) + 1  # cv2 would take 4 sigma for float images; 3 is as good and faster
    bone = cv2.GaussianBlur(cv.bone, (taps, taps), sigma, dst=cv.bone)
    img = cv2.addWeighted(tissue, tissue_gain * gain, bone, gain, offset * gain, dst=tissue)
    _burn_marker(img, rng, long_side)
    noise_sd = float(rng.uniform(0.012, 0.03))
    # Gaussian noise from random bytes through a table of Gaussian quantiles: 6x faster than standard_normal.
    noise_bytes = np.frombuffer(noise_rng.bytes(h * w), np.uint8).reshape(h, w)
    noise = cv2.LUT(
        noise_bytes, _gaussian_levels() * np.float32(255.0 * noise_sd), _SCRATCH.array("noise", (h, w), np.float32)
    )
    out = _SCRATCH.array("out", (h, w), np.uint8)
    out = cv2.addWeighted(img, 255.0, noise, 1.0, -0.5, out, dtype=cv2.CV_8U)  # floor(255 x + noise), saturated
    gamma = float(rng.uniform(0.8, 1.25))
    lut = np.clip(np.round(255.0 * (np.arange(256) / 255.0) ** gamma), 0, 255).astype(np.uint8)
    return cv2.LUT(out, lut)


def _burn_marker(img: np.ndarray, rng: np.random.Generator, long_side: int) -> None:
    """Burn a bright 'L' or 'R' side marker near a random corner, a distractor that carries no label."""
    h, w = img.shape
    letter = "L" if rng.random() < 0.5 else "R"
    scale = long_side / 330 * float(rng.uniform(0.8, 1.3))
    thickness = max(1, int(round(long_side / 170)))
    x = int(w * (rng.uniform(0.04, 0.12) if rng.random() < 0.5 else rng.uniform(0.8, 0.88)))
    y = int(h * (rng.uniform(0.1, 0.18) if rng.random() < 0.5 else rng.uniform(0.88, 0.95)))
    (tw, th), base = cv2.getTextSize(letter, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    pad = thickness + 2
    patch = np.zeros((th + base + 2 * pad, tw + 2 * pad), np.uint8)
    cv2.putText(patch, letter, (pad, th + pad), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thickness, cv2.LINE_AA)
    y0, x0 = max(0, y - th - pad), max(0, x - pad)
    region = img[y0 : y0 + patch.shape[0], x0 : x0 + patch.shape[1]]
    value = float(rng.uniform(0.85, 1.0)) / 255.0
    np.maximum(region, patch[: region.shape[0], : region.shape[1]] * value, out=region)


# ------------------------------------------------------------------------------------------------ writing
@dataclass(frozen=True)
class _Job:
    """Everything a worker needs to draw and write one image."""

    spec: ImageSpec
    seed: int
    strength: float
    long_side: int
    root: str  # the (temporary) MURA-v1.1 folder


def draw_image(
    spec: ImageSpec, seed: int, strength: float, long_side: int
) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Draw the image of ``spec`` (grayscale, or gray repeated over 3 channels) and return it with its boxes."""
    image, boxes = render_image(spec.body_part, spec.finding, (seed, spec.index), strength, long_side)
    return (cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if spec.rgb else image), boxes


def encode_png(image: np.ndarray) -> bytes:
    """Encode a grayscale or 3-channel uint8 image as PNG, with the settings fastest for these images."""
    ok, png = cv2.imencode(".png", image, PNG_PARAMS_GRAY if image.ndim == 2 else PNG_PARAMS_RGB)
    if not ok:  # pragma: no cover - cv2 failure
        raise RuntimeError(f"cannot encode a {image.shape} image as PNG")
    return png.tobytes()


def _run_job(job: _Job) -> list[str]:
    """Draw one image, write it as PNG into its study folder (made beforehand), and return its boxes.csv rows."""
    spec = job.spec
    image, boxes = draw_image(spec, job.seed, job.strength, job.long_side)
    (Path(job.root) / spec.image_path.removeprefix(f"{ROOT_NAME}/")).write_bytes(encode_png(image))
    return [f"{spec.image_path},{x0},{y0},{x1},{y1},{spec.finding}" for x0, y0, x1, y1 in boxes]


def _run_jobs(jobs: list[_Job], workers: int) -> Iterator[list[str]]:
    """Run the jobs in order, in-process for one worker or in a process pool otherwise."""
    if workers <= 1:
        yield from map(_run_job, jobs)
        _SCRATCH.buffers.clear()  # pool workers free theirs on exit
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_run_job, jobs, chunksize=max(1, min(32, len(jobs) // (workers * 8))))


def _write_csvs(root: Path, plan: list[StudySpec], box_rows: list[str]) -> None:
    for split in (TRAIN, VALID):
        studies = [s for s in plan if s.split == split]
        images = "".join(f"{im.image_path}\n" for s in studies for im in s.images)
        labels = "".join(f"{s.study_path},{s.label}\n" for s in studies)
        (root / f"{split}_image_paths.csv").write_text(images, encoding="utf-8")
        (root / f"{split}_labeled_studies.csv").write_text(labels, encoding="utf-8")
    (root / BOXES_CSV).write_text("\n".join([BOXES_HEADER, *box_rows]) + "\n", encoding="utf-8")


def generate_dataset(
    out: str | os.PathLike,
    studies: int = 600,
    seed: int = 0,
    difficulty: str | float = "medium",
    long_side: int = 512,
    workers: int = 0,
    overwrite: bool = False,
    valid_fraction: float = 0.1,
) -> SynthSummary:
    """Write a synthetic dataset in the MURA v1.1 layout to ``out/MURA-v1.1``, with ``boxes.csv`` for its findings.

    The same arguments give byte-identical files, whatever the number of workers.

    Args:
        out: folder to hold ``MURA-v1.1/``.
        studies: number of studies over both splits.
        seed: random seed.
        difficulty: ``easy``, ``medium``, ``hard`` or a number in (0, 1] (1 = easiest).
        long_side: approximate long side of the images in pixels (each image varies by up to 15%).
        workers: processes used to draw images; 0 means all cores, 1 draws in this process.
        overwrite: replace an existing ``out/MURA-v1.1``.
        valid_fraction: share of the studies in the ``valid`` split.

    Returns:
        A summary whose ``str`` is a short human report.

    Raises:
        UserError: bad arguments, or ``out/MURA-v1.1`` exists and ``overwrite`` is not set.
    """
    strength = parse_difficulty(difficulty)
    if studies < 1:
        raise UserError(f"--studies {studies}: need at least 1 study")
    if not 32 <= long_side <= 8192:
        raise UserError(f"--size {long_side}: choose an image size between 32 and 8192 pixels")
    if not 0.0 <= valid_fraction < 1.0:
        raise UserError(f"valid_fraction {valid_fraction}: must be in [0, 1)")
    if workers < 0:
        raise UserError(f"--workers {workers}: must be 0 (all cores) or more")
    workers = workers or os.cpu_count() or 1
    start = time.perf_counter()
    if Path(out).exists() and not Path(out).is_dir():
        raise UserError(f"{out}: exists and is not a folder; give a folder to write {ROOT_NAME}/ into")
    target = Path(out) / ROOT_NAME
    plan = plan_dataset(studies, seed, strength, valid_fraction)
    with atomic_dir(target, overwrite=overwrite) as tmp:
        for study in plan:  # once per study here rather than once per image in the workers
            (tmp / study.study_path.removeprefix(f"{ROOT_NAME}/")).mkdir(parents=True, exist_ok=True)
        jobs = [_Job(im, seed, strength, long_side, str(tmp)) for s in plan for im in s.images]
        box_rows: list[str] = []
        for rows in tqdm(_run_jobs(jobs, workers), total=len(jobs), desc="drawing", unit="img", disable=None):
            box_rows.extend(rows)
        _write_csvs(tmp, plan, box_rows)
    summary = SynthSummary(root=target, seed=seed, strength=strength, boxes=len(box_rows))
    for split in (TRAIN, VALID):
        chosen = [s for s in plan if s.split == split]
        summary.studies[split] = len(chosen)
        summary.abnormal[split] = sum(s.label for s in chosen)
        summary.images[split] = sum(len(s.images) for s in chosen)
    summary.seconds = time.perf_counter() - start
    return summary
