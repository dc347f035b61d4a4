"""Boxes from heatmaps: threshold at a fraction of the maximum, keep the largest connected component."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

DEFAULT_THRESHOLD = 0.2


@dataclass(frozen=True)
class Box:
    """A pixel box, half-open: it covers columns ``x0 .. x1 - 1`` and rows ``y0 .. y1 - 1``."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def area(self) -> int:
        """Number of pixels covered."""
        return max(0, self.x1 - self.x0) * max(0, self.y1 - self.y0)

    def contains(self, x: float, y: float) -> bool:
        """Whether the pixel ``(x, y)`` lies inside."""
        return self.x0 <= x < self.x1 and self.y0 <= y < self.y1

    def iou(self, other: Box) -> float:
        """Intersection over union with another box (0 when both are empty)."""
        width = min(self.x1, other.x1) - max(self.x0, other.x0)
        height = min(self.y1, other.y1) - max(self.y0, other.y0)
        inter = max(0, width) * max(0, height)
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    def to_dict(self) -> dict[str, int]:
        """JSON-serialisable ``{x0, y0, x1, y1}``."""
        return asdict(self)


@dataclass(frozen=True)
class Localisation:
    """Where a heatmap points: the box of its largest hot component, and its peak pixel ``(x, y)``."""

    box: Box | None
    peak: tuple[int, int]

    def to_dict(self) -> dict:
        """JSON-serialisable ``{box, peak}`` (``box`` is null for an all-zero map)."""
        return {"box": self.box.to_dict() if self.box else None, "peak": {"x": self.peak[0], "y": self.peak[1]}}


def peak(heatmap: np.ndarray) -> tuple[int, int]:
    """The ``(x, y)`` pixel of the map's maximum (the first one in row-major order on ties)."""
    y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return int(x), int(y)


def largest_component_box(heatmap: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> Box | None:
    """Box of the largest 8-connected region where the map is at least ``threshold`` times its maximum.

    Ties in size go to the component holding the higher value. Returns None when the map has no positive value.
    """
    top = float(np.max(heatmap)) if heatmap.size else 0.0
    if not top > 0:
        return None
    labels, count = ndimage.label(heatmap >= threshold * top, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    maxima = ndimage.maximum(heatmap, labels, index=np.arange(1, count + 1))
    best = max(range(count), key=lambda i: (sizes[i], maxima[i])) + 1
    rows, cols = ndimage.find_objects(labels)[best - 1]
    return Box(int(cols.start), int(rows.start), int(cols.stop), int(rows.stop))


def localise(heatmap: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> Localisation:
    """Box and peak of a heatmap (see ``largest_component_box`` and ``peak``)."""
    return Localisation(largest_component_box(heatmap, threshold), peak(heatmap))
