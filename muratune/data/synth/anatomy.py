"""Bones of each body part as simple shapes: the templates synthetic radiographs are drawn from."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


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
        elif isinstance(item, _Blob):
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
