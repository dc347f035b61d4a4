"""Localisation score of CAM boxes and peaks against planted findings: pointing game, IoU and chance."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from muratune.cam.boxes import Box
from muratune.constants import IMAGE_PATH
from muratune.errors import UserError

BOX_COLUMNS = (IMAGE_PATH, "x0", "y0", "x1", "y1")
POINTING_GAME = "pointing_game"
MEAN_IOU = "mean_iou"
CHANCE = "chance"


@dataclass(frozen=True)
class Prediction:
    """What a CAM said about one image: peak ``(x, y)``, box (None for an empty map) and the image size."""

    image_path: str
    peak: tuple[int, int]
    box: Box | None
    width: int
    height: int


def normalise_path(path: str) -> str:
    """An image path as a lookup key: forward slashes, no leading ``./``."""
    text = str(path).strip().replace("\\", "/")
    while text.startswith("./"):
        text = text[2:]
    return text


def read_boxes(path: str | os.PathLike) -> dict[str, list[Box]]:
    """Read a ``boxes.csv`` (``image_path,x0,y0,x1,y1[,kind]``, pixel coordinates) into boxes per image path.

    Raises:
        UserError: the file is missing, lacks a column or has a non-integer coordinate.
    """
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype={IMAGE_PATH: str}, encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise UserError(f"{path}: cannot read the boxes CSV ({type(err).__name__}: {err})") from None
    missing = [c for c in BOX_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}; expected {','.join(BOX_COLUMNS)}")
    try:
        coords = frame[list(BOX_COLUMNS[1:])].astype(int).to_numpy()
    except (ValueError, TypeError):
        raise UserError(f"{path}: box coordinates must be integers") from None
    boxes: dict[str, list[Box]] = {}
    for image_path, (x0, y0, x1, y1) in zip(frame[IMAGE_PATH], coords, strict=True):
        boxes.setdefault(normalise_path(image_path), []).append(Box(int(x0), int(y0), int(x1), int(y1)))
    return boxes


def covered_fraction(boxes: Iterable[Box], width: int, height: int) -> float:
    """Fraction of a ``width x height`` image covered by the union of ``boxes`` (the pointing game's chance)."""
    mask = np.zeros((height, width), dtype=bool)
    for box in boxes:
        mask[max(0, box.y0) : max(0, box.y1), max(0, box.x0) : max(0, box.x1)] = True
    return float(mask.mean()) if mask.size else 0.0


def localisation_score(predictions: Iterable[Prediction], truth: dict[str, list[Box]]) -> dict[str, float | int]:
    """Score predictions on the images that have true boxes (the abnormal ones); others are ignored.

    Returns:
        ``pointing_game`` (share of images whose peak falls in a true box), ``mean_iou`` (IoU of the predicted
        box with its best-matching true box; 0 for an empty map), ``chance`` (mean fraction of the image the
        true boxes cover: the pointing game of a uniformly random peak), and ``n_images`` scored. Rates are
        NaN when no image could be scored.
    """
    hits, ious, chances = [], [], []
    for pred in predictions:
        boxes = truth.get(normalise_path(pred.image_path))
        if not boxes:
            continue
        hits.append(any(b.contains(*pred.peak) for b in boxes))
        ious.append(max(pred.box.iou(b) for b in boxes) if pred.box else 0.0)
        chances.append(covered_fraction(boxes, pred.width, pred.height))
    nan = float("nan")
    return {
        POINTING_GAME: float(np.mean(hits)) if hits else nan,
        MEAN_IOU: float(np.mean(ious)) if ious else nan,
        CHANCE: float(np.mean(chances)) if chances else nan,
        "n_images": len(hits),
    }
