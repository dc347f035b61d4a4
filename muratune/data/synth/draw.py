"""Drawing one synthetic radiograph: bones, soft tissue, a planted finding, exposure, noise and a marker."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import cv2
import numpy as np

from muratune.data.synth.anatomy import _TEMPLATES, _Blob, _Bone
from muratune.data.synth.geometry import (
    _SCRATCH,
    _axes,
    _box_kernel,
    _ellipse,
    _fill,
    _Pose,
    _quad,
    _tissue_factor,
    _tissue_kernel,
)
from muratune.data.synth.plan import NOISE_STREAM


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
    # Gaussian noise from random bytes through a table of Gaussian quantiles (faster: docs/performance.md).
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
