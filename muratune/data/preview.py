"""`muratune data preview`: a PNG grid of augmented samples, to see what a policy does."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from muratune.data.augment import create_transform
from muratune.errors import UserError
from muratune.fileio import atomic_path

_PAD = 4
_STRIP = 22
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def preview_policy(
    images: list[np.ndarray],
    policy: str,
    out_png: Path,
    size: int = 224,
    per_image: int = 4,
    seed: int = 0,
) -> Path:
    """Write a PNG grid showing a policy at work: one row per image, the original first, then augmented samples.

    Args:
        images: Grayscale (HxW) or colour (HxWx3) uint8 images; each is resized to ``size x size`` first,
            as the cache does.
        policy: A name from ``list_policies()``.
        out_png: Where to write the PNG (atomically).
        size: Side of each tile in pixels.
        per_image: Augmented samples per image.
        seed: Seed of the augmentation pipeline, so the same call draws the same grid.

    Returns:
        ``out_png``.

    Raises:
        UserError: If the policy is unknown, no images are given or ``per_image`` is below 1.
    """
    if not images:
        raise UserError("preview_policy: no images to preview")
    if per_image < 1:
        raise UserError(f"preview_policy: per_image must be at least 1, got {per_image}")
    transform = create_transform(policy, size, seed=seed)
    rows = []
    for image in images:
        original = _to_tile(image, size)
        samples = [transform(image=original)["image"] for _ in range(per_image)]
        rows.append(_hstack([original, *samples]))
    labels = ["original", *(f"sample {i + 1}" for i in range(per_image))]
    grid = np.vstack([_title_strip(f"policy: {policy}", labels, size, rows[0].shape[1]), *_interleave_pad(rows)])
    out_png = Path(out_png)
    ok, encoded = cv2.imencode(".png", grid)
    if not ok:
        raise RuntimeError(f"could not encode preview PNG for {out_png}")
    with atomic_path(out_png) as tmp:
        tmp.write_bytes(encoded.tobytes())
    return out_png


def _to_tile(image: np.ndarray, size: int) -> np.ndarray:
    """Return ``image`` as a ``size x size`` uint8 grayscale array."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    elif image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY if image.shape[2] == 3 else cv2.COLOR_RGBA2GRAY)
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.shape != (size, size):
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return image


def _hstack(tiles: list[np.ndarray]) -> np.ndarray:
    """Join tiles left to right with white gaps."""
    gap = np.full((tiles[0].shape[0], _PAD), 255, np.uint8)
    parts: list[np.ndarray] = []
    for tile in tiles:
        parts.extend([gap, tile])
    return np.hstack([*parts, gap])


def _interleave_pad(rows: list[np.ndarray]) -> list[np.ndarray]:
    """Put a white gap below each row."""
    gap = np.full((_PAD, rows[0].shape[1]), 255, np.uint8)
    out: list[np.ndarray] = []
    for row in rows:
        out.extend([row, gap])
    return out


def _title_strip(title: str, labels: list[str], size: int, width: int) -> np.ndarray:
    """Draw the policy name and the column labels on a white strip."""
    strip = np.full((2 * _STRIP, width), 255, np.uint8)
    scale = 0.45
    cv2.putText(strip, title, (_PAD, _STRIP - 6), _FONT, scale, 0, 1, cv2.LINE_AA)
    for column, label in enumerate(labels):
        x = _PAD + column * (size + _PAD)
        cv2.putText(strip, label, (x, 2 * _STRIP - 6), _FONT, scale, 0, 1, cv2.LINE_AA)
    return strip
