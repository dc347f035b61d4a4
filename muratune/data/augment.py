"""Named augmentation policies for cached grayscale radiographs, built with albumentations."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# albumentations asks PyPI for a newer version on import (2 s timeout and a UserWarning when offline, in every
# Ray worker); an explicit setting by the user still wins.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from muratune.errors import UserError  # noqa: E402

PolicyBuilder = Callable[[int], list[A.BasicTransform]]


@dataclass(frozen=True)
class _Policy:
    builder: PolicyBuilder
    description: str


_POLICIES: dict[str, _Policy] = {}


def register_policy(name: str) -> Callable[[PolicyBuilder], PolicyBuilder]:
    """Register a policy builder under ``name``; the first docstring line becomes its description.

    A builder takes the square image size and returns the transforms, in order, that
    ``create_transform`` wraps in one ``A.Compose``.
    """

    def decorator(builder: PolicyBuilder) -> PolicyBuilder:
        if name in _POLICIES:
            raise ValueError(f"augmentation policy {name!r} is registered twice")
        description = builder.__doc__.strip().splitlines()[0] if builder.__doc__ else name
        _POLICIES[name] = _Policy(builder=builder, description=description)
        return builder

    return decorator


def list_policies() -> dict[str, str]:
    """Return the registered policies as name -> one-line description, in registration order."""
    return {name: policy.description for name, policy in _POLICIES.items()}


def create_transform(policy: str, size: int, seed: int | None = None) -> A.Compose:
    """Build the augmentation pipeline for a named policy.

    The pipeline takes and returns a ``size x size`` uint8 grayscale array (``transform(image=img)["image"]``)
    and never normalises: the dataset does that afterwards.

    Args:
        policy: A name from ``list_policies()``.
        size: Side of the square cached images the pipeline will see.
        seed: Seed of the pipeline's own random state. Two pipelines built with the same seed give the same
            sequence of outputs; None draws a fresh state. In DataLoader workers, call
            ``transform.set_random_seed(base_seed + worker_id)`` so workers do not repeat each other.

    Returns:
        An ``albumentations.Compose``.

    Raises:
        UserError: If ``policy`` is unknown or ``size`` is not positive.
    """
    if size <= 0:
        raise UserError(f"augmentation size must be positive, got {size}")
    transforms = _lookup(policy).builder(size)
    return A.Compose(transforms, seed=seed)


def _lookup(policy: str) -> _Policy:
    """Return the registered policy, or raise a UserError naming the known ones and the closest match."""
    if policy in _POLICIES:
        return _POLICIES[policy]
    known = ", ".join(_POLICIES)
    close = difflib.get_close_matches(policy, list(_POLICIES), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise UserError(f"unknown augmentation policy {policy!r}{hint} (known: {known})")


class FlipAffine(A.ImageOnlyTransform):
    """Random horizontal flip, rotation, zoom and shift as one ``cv2.warpAffine`` call.

    At 224 px albumentations' ``Affine`` spends longer on its matrix and checks than on the warp itself;
    this transform builds the 2x3 matrix directly, folds the flip into it, and flips with ``cv2.flip`` alone
    when no warp is drawn. Borders are filled with 0 and interpolation is bilinear. Images only: masks,
    boxes and keypoints are not transformed.

    Args:
        rotate: Range of the rotation angle, in degrees (counter-clockwise).
        scale: Range of the zoom factor (>1 zooms in).
        translate: Range of the shift along each axis, as a fraction of that side.
        flip_p: Probability of a horizontal flip.
        affine_p: Probability of the rotate/zoom/shift warp.
        p: Probability of applying the transform at all.
    """

    def __init__(
        self,
        rotate: tuple[float, float] = (0.0, 0.0),
        scale: tuple[float, float] = (1.0, 1.0),
        translate: tuple[float, float] = (0.0, 0.0),
        flip_p: float = 0.5,
        affine_p: float = 1.0,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        self.rotate = rotate
        self.scale = scale
        self.translate = translate
        self.flip_p = flip_p
        self.affine_p = affine_p

    def get_params(self) -> dict[str, float | bool]:
        """Draw the flip and warp decisions and the warp parameters from the pipeline's generator."""
        rng = self.py_random
        return {
            "flip": rng.random() < self.flip_p,
            "warp": rng.random() < self.affine_p,
            "angle": rng.uniform(*self.rotate),
            "zoom": rng.uniform(*self.scale),
            "shift_x": rng.uniform(*self.translate),
            "shift_y": rng.uniform(*self.translate),
        }

    def apply(
        self,
        img: np.ndarray,
        flip: bool = False,
        warp: bool = False,
        angle: float = 0.0,
        zoom: float = 1.0,
        shift_x: float = 0.0,
        shift_y: float = 0.0,
        **params: object,
    ) -> np.ndarray:
        """Flip and/or warp ``img`` with the drawn parameters."""
        if not warp:
            return cv2.flip(img, 1) if flip else img
        height, width = img.shape[:2]
        matrix = affine_matrix(width, height, angle, zoom, shift_x * width, shift_y * height, flip)
        return cv2.warpAffine(
            img, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        )

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        """Name the constructor arguments shown by ``repr`` and used by serialisation."""
        return ("rotate", "scale", "translate", "flip_p", "affine_p")


class HoleDropout(A.ImageOnlyTransform):
    """Zero a few random rectangles, like ``A.CoarseDropout`` with ``fill=0`` at a fifth of its cost.

    Args:
        num_holes: Inclusive range of the number of holes.
        hole_size: Range of each hole's height and width, as a fraction of the image side.
        p: Probability of applying the transform.
    """

    def __init__(
        self, num_holes: tuple[int, int] = (1, 2), hole_size: tuple[float, float] = (0.1, 0.2), p: float = 0.5
    ) -> None:
        super().__init__(p=p)
        self.num_holes = num_holes
        self.hole_size = hole_size

    def get_params(self) -> dict[str, list[tuple[float, float, float, float]]]:
        """Draw each hole as (height, width, top, left) fractions; top and left are of the free range."""
        rng = self.py_random
        count = rng.randint(*self.num_holes)
        return {
            "holes": [
                (rng.uniform(*self.hole_size), rng.uniform(*self.hole_size), rng.random(), rng.random())
                for _ in range(count)
            ]
        }

    def apply(
        self, img: np.ndarray, holes: Sequence[tuple[float, float, float, float]] = (), **params: object
    ) -> np.ndarray:
        """Return a copy of ``img`` with the holes set to 0."""
        height, width = img.shape[:2]
        out = img.copy()
        for hole_h, hole_w, top, left in holes:
            h, w = max(1, round(hole_h * height)), max(1, round(hole_w * width))
            y, x = int(top * (height - h + 1)), int(left * (width - w + 1))
            out[y : y + h, x : x + w] = 0
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        """Name the constructor arguments shown by ``repr`` and used by serialisation."""
        return ("num_holes", "hole_size")


def affine_matrix(
    width: int, height: int, angle: float, zoom: float, shift_x: float, shift_y: float, flip: bool
) -> np.ndarray:
    """Return the 2x3 forward matrix: optional horizontal flip, then rotation and zoom about the centre, then shift.

    The centre is that of the pixel grid, ``((width - 1) / 2, (height - 1) / 2)``, so a flip alone maps
    pixels exactly onto pixels, like ``np.fliplr``.
    """
    centre = ((width - 1) / 2, (height - 1) / 2)
    matrix = np.asarray(cv2.getRotationMatrix2D(centre, angle, zoom), dtype=np.float64)
    if flip:
        # x -> (width - 1) - x before the rotation: negate the x column and move the origin.
        matrix[:, 2] += matrix[:, 0] * (width - 1)
        matrix[:, 0] *= -1
    matrix[:, 2] += np.array([shift_x, shift_y])
    return matrix


# ---------------------------------------------------------------- policies


@register_policy("none")
def _none(size: int) -> list[A.BasicTransform]:
    """No augmentation: images pass through unchanged."""
    return []


@register_policy("flip")
def _flip(size: int) -> list[A.BasicTransform]:
    """Random horizontal flip (p=0.5)."""
    return [A.HorizontalFlip(p=0.5)]


@register_policy("mura-paper")
def _mura_paper(size: int) -> list[A.BasicTransform]:
    """Horizontal flip and rotation up to 30 degrees, as in the MURA paper (Rajpurkar et al., 2017)."""
    return [FlipAffine(rotate=(-30, 30), flip_p=0.5, affine_p=1.0)]


@dataclass(frozen=True)
class _Strength:
    """Magnitudes and probabilities of one graded policy (light, medium, heavy)."""

    shift: float  # fraction of the side
    scale: float  # +- relative zoom
    rotate: float  # +- degrees
    affine_p: float
    brightness_contrast: float
    gamma: float  # +- percent around 100
    clahe_clip: float
    clahe_p: float
    sharpen_blur_p: float
    dropout_holes: tuple[int, int]
    dropout_side: tuple[float, float]  # fraction of the side
    dropout_p: float


# CLAHE costs ~200 us at 224 px (twice a warp), so it stays rare even in `heavy`.
_LIGHT = _Strength(
    shift=0.05,
    scale=0.05,
    rotate=10,
    affine_p=0.7,
    brightness_contrast=0.1,
    gamma=10,
    clahe_clip=2.0,
    clahe_p=0.05,
    sharpen_blur_p=0.1,
    dropout_holes=(1, 2),
    dropout_side=(0.05, 0.10),
    dropout_p=0.1,
)
_MEDIUM = _Strength(
    shift=0.08,
    scale=0.10,
    rotate=20,
    affine_p=0.8,
    brightness_contrast=0.2,
    gamma=20,
    clahe_clip=3.0,
    clahe_p=0.10,
    sharpen_blur_p=0.25,
    dropout_holes=(1, 4),
    dropout_side=(0.05, 0.12),
    dropout_p=0.25,
)
_HEAVY = _Strength(
    shift=0.12,
    scale=0.20,
    rotate=30,
    affine_p=0.9,
    brightness_contrast=0.3,
    gamma=30,
    clahe_clip=4.0,
    clahe_p=0.15,
    sharpen_blur_p=0.4,
    dropout_holes=(2, 8),
    dropout_side=(0.05, 0.15),
    dropout_p=0.5,
)


def _graded(s: _Strength) -> list[A.BasicTransform]:
    """Build flip + one fused affine warp + photometric jitter + dropout at the given strength.

    Flip, shift, scale and rotation share a single warp, so each image is interpolated once.
    """
    return [
        FlipAffine(
            rotate=(-s.rotate, s.rotate),
            scale=(1 - s.scale, 1 + s.scale),
            translate=(-s.shift, s.shift),
            flip_p=0.5,
            affine_p=s.affine_p,
        ),
        A.RandomBrightnessContrast(brightness_limit=s.brightness_contrast, contrast_limit=s.brightness_contrast, p=0.5),
        A.RandomGamma(gamma_limit=(100 - s.gamma, 100 + s.gamma), p=0.3),
        A.CLAHE(clip_limit=(1.0, s.clahe_clip), tile_grid_size=(8, 8), p=s.clahe_p),
        A.OneOf(
            [A.Sharpen(alpha=(0.1, 0.3), lightness=(0.8, 1.0), p=1.0), A.GaussianBlur(blur_limit=(3, 5), p=1.0)],
            p=s.sharpen_blur_p,
        ),
        HoleDropout(num_holes=s.dropout_holes, hole_size=s.dropout_side, p=s.dropout_p),
    ]


@register_policy("light")
def _light(size: int) -> list[A.BasicTransform]:
    """Flip, small shift/scale/rotate (5%, 5%, 10 deg), mild contrast, CLAHE, gamma, sharpen/blur, rare dropout."""
    return _graded(_LIGHT)


@register_policy("medium")
def _medium(size: int) -> list[A.BasicTransform]:
    """Flip, shift/scale/rotate (8%, 10%, 20 deg), contrast, CLAHE, gamma, sharpen/blur, coarse dropout."""
    return _graded(_MEDIUM)


@register_policy("heavy")
def _heavy(size: int) -> list[A.BasicTransform]:
    """Flip, strong shift/scale/rotate (12%, 20%, 30 deg), contrast, CLAHE, gamma, sharpen/blur, dropout."""
    return _graded(_HEAVY)


@register_policy("histeq-crop-rotate")
def _histeq_crop_rotate(size: int) -> list[A.BasicTransform]:
    """Histogram equalisation, flip, 7/8 centre crop resized back, rotation up to 20 deg, sharpen, Gaussian blur.

    Reproduces the preprocessing of earlier MURA projects. The centre crop and the resize back to ``size``
    are a fixed zoom about the centre, so they are fused with the rotation into one affine warp.
    """
    crop = max(1, round(size * 7 / 8))
    return [
        # Equalise before the warp so the zero-filled corners do not enter the histogram.
        A.Equalize(mode="cv", p=1.0),
        FlipAffine(rotate=(-20, 20), scale=(size / crop, size / crop), flip_p=0.5, affine_p=1.0),
        A.Sharpen(alpha=(0.1, 0.3), lightness=(0.8, 1.0), p=0.3),
        A.GaussianBlur(blur_limit=(3, 5), p=0.3),
    ]
