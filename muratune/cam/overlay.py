"""Drawing a class activation map over a radiograph: the heatmap, the box, the peak and a caption band."""

from __future__ import annotations

import cv2
import numpy as np

from muratune.cam.boxes import Localisation


def overlay(
    image: np.ndarray,
    heatmap: np.ndarray,
    localisation: Localisation | None = None,
    caption: str = "",
    alpha: float = 0.5,
) -> np.ndarray:
    """Draw a heatmap over a radiograph, with the box, the peak and a caption band on top.

    Args:
        image: 2-D uint8 grayscale (or ``H x W x 3`` RGB) radiograph.
        heatmap: ``H x W`` map in [0, 1] on the same pixels.
        localisation: box (green) and peak (white cross) to draw.
        caption: text written in a black band above the image.
        alpha: opacity of the colour map where the map is 1 (it fades out where the map is 0).

    Returns:
        ``(H + band) x W x 3`` BGR uint8 image, ready for ``cv2.imwrite``.
    """
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR).astype(np.float32)
    heat = np.clip(np.nan_to_num(heatmap.astype(np.float32)), 0.0, 1.0)
    colour = cv2.applyColorMap(np.rint(heat * 255).astype(np.uint8), cv2.COLORMAP_JET).astype(np.float32)
    opacity = (alpha * heat)[..., None]
    out = np.clip(base * (1 - opacity) + colour * opacity, 0, 255).astype(np.uint8)
    height, width = gray.shape
    thickness = max(1, round(max(height, width) / 250))
    if localisation is not None:
        box = localisation.box
        if box is not None:
            cv2.rectangle(out, (box.x0, box.y0), (box.x1 - 1, box.y1 - 1), (0, 255, 0), thickness)
        size = max(5, round(max(height, width) / 40))
        cv2.drawMarker(out, localisation.peak, (255, 255, 255), cv2.MARKER_CROSS, size, thickness)
    return _with_caption(out, caption)


def _with_caption(image: np.ndarray, caption: str) -> np.ndarray:
    """Add a black band with ``caption`` (white) above an image; the font scales with the image width."""
    if not caption:
        return image
    width = image.shape[1]
    scale = max(0.3, width / 700)
    (text_w, text_h), baseline = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    if text_w > width - 4:
        scale *= (width - 4) / text_w
        (text_w, text_h), baseline = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    band = np.zeros((text_h + baseline + 6, width, 3), dtype=np.uint8)
    cv2.putText(band, caption, (2, text_h + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack([band, image])
