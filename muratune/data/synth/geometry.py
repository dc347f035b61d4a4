"""Geometry helpers for drawing: poses, ellipses, quads, smoothing kernels and per-thread work arrays."""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np


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


def _ellipse(c: Sequence[float] | np.ndarray, ax: float, ay: float, angle: float = 0.0, n: int = 28) -> np.ndarray:
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
