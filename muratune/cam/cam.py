"""Class activation maps: classic CAM or Grad-CAM per member, averaged over an ensemble on the original pixels."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from muratune.data.images import Geometry, resize_square, unsquare
from muratune.ensemble.select import Weights, weights_for
from muratune.ensemble.trained import TrainedModel
from muratune.errors import UserError

if TYPE_CHECKING:
    from muratune.ensemble.predictor import StudyPredictor

AUTO = "auto"
CAM = "cam"
GRADCAM = "gradcam"
GRADCAM_PP = "gradcam++"
LAYERCAM = "layercam"
HIRESCAM = "hirescam"
METHODS: tuple[str, ...] = (AUTO, CAM, GRADCAM, GRADCAM_PP, LAYERCAM, HIRESCAM)
# The coarsest map that still localises: at 64 px the last ResNet stage gives 2x2 and points at grid-cell centres;
# stage 2 (8x8) localises (docs/cam.md has the measurements).
MIN_MAP_SIDE = 8
# On an intermediate stage, LayerCAM (Jiang et al. 2021) weighs every location by its own positive gradient instead
# of one channel-wide mean, which is what keeps shallow-layer maps sharp (docs/cam.md compares the methods).
INTERMEDIATE_METHOD = LAYERCAM
# Maps are averaged over SHIFTS x SHIFTS translations of the input by 1/SHIFTS of a map cell, so the peak is not
# stuck on the centre of a coarse cell (a cell of an 8x8 map is wider than the planted findings).
DEFAULT_SHIFTS = 2
MAX_SHIFTS = 8


@dataclass(frozen=True)
class CamSpec:
    """How one member's map is made.

    Attributes:
        method: ``cam`` (classic, on the final features), ``gradcam``, ``gradcam++``, ``layercam`` or ``hirescam``.
        layer: module name of the gradient-based method's layer (``None`` for classic CAM: the final feature map).
        map_side: side of the activation map at the member's input size (before upsampling; 0 if unknown).
        shifts: maps are averaged over ``shifts x shifts`` input translations of ``1/shifts`` of a map cell.
    """

    method: str
    layer: str | None
    map_side: int
    shifts: int = 1

    def describe(self) -> str:
        """Short text such as ``layercam@layer2 (8x8, 2x2 shifts)``."""
        shifted = f", {self.shifts}x{self.shifts} shifts" if self.shifts > 1 else ""
        return f"{self.method}@{self.layer or 'features'} ({self.map_side}x{self.map_side}{shifted})"

    def offsets(self, image_size: int) -> list[tuple[int, int]]:
        """The ``(dx, dy)`` input translations in pixels, ``(0, 0)`` first; just that one when a cell is 1 pixel."""
        cell = image_size / self.map_side if self.map_side else 1.0
        steps = sorted({round(i * cell / self.shifts) for i in range(self.shifts)}) if cell > 1 else [0]
        return [(dx, dy) for dy in steps for dx in steps]


@dataclass
class CamResult:
    """The ensemble map of one image on its original pixels, and the ensemble probability.

    Attributes:
        heatmap: ``height x width`` float32 in [0, 1] (weighted mean of the members' max-normalised maps).
        prob: ensemble image probability of abnormality.
    """

    heatmap: np.ndarray
    prob: float


# ------------------------------------------------------------------------------------------------ layers
def feature_stages(model: nn.Module) -> list[dict]:
    """timm's ``feature_info`` of a model (``module``, ``reduction``, ``num_chs`` per stage); empty if it has none."""
    info = getattr(model, "feature_info", None)
    if not info:
        return []
    return [dict(stage) for stage in info if "module" in stage and "reduction" in stage]


def has_gap_linear_head(model: nn.Module) -> bool:
    """Whether the head is global average pooling then one linear layer (classic CAM is exact then)."""
    timm_model: Any = model  # timm's hooks are not on nn.Module's type
    classifier = timm_model.get_classifier() if hasattr(model, "get_classifier") else None
    pool = getattr(model, "global_pool", None)
    pool_type = getattr(pool, "pool_type", pool)
    return (
        isinstance(classifier, nn.Linear)
        and pool_type == "avg"
        and hasattr(model, "forward_features")
        and getattr(model, "head", None) is None
    )


def map_side(image_size: int, reduction: int) -> int:
    """Side of a feature map of a stage with total stride ``reduction`` at a square input of ``image_size``."""
    return max(1, math.ceil(image_size / reduction))


def _named_stage(stages: list[dict], layer: str | int, model: nn.Module) -> tuple[str, int | None]:
    """Resolve ``layer`` (stage index or module name) to a module name and its stride (None if unknown)."""
    text = str(layer).strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        if not stages or not -len(stages) <= index < len(stages):
            raise UserError(f"--layer {text}: stage index out of range; this model has {len(stages)} feature stages")
        return str(stages[index]["module"]), int(stages[index]["reduction"])
    names = dict(model.named_modules())
    if text not in names or not text:
        stage_names = ", ".join(str(s["module"]) for s in stages) or "see model.named_modules()"
        raise UserError(f"--layer {text!r}: no such module in this model; feature stages are {stage_names}")
    stride = next((int(s["reduction"]) for s in stages if s["module"] == text), None)
    return text, stride


def resolve_layer(
    model: nn.Module,
    image_size: int,
    layer: str | int = AUTO,
    method: str = AUTO,
    min_side: int = MIN_MAP_SIDE,
    shifts: int = DEFAULT_SHIFTS,
) -> CamSpec:
    """Choose the CAM method and layer for one model.

    ``auto`` picks classic CAM when the head is average pooling + linear and the final map has at least
    ``min_side`` cells per side (the MURA paper's setting: 224 px DenseNet, 7x7 maps, gets classic CAM when
    ``min_side <= 7``); otherwise LayerCAM on the deepest timm feature stage whose map has at least ``min_side``
    cells per side (stage 2 of a ResNet at 64 px), or the finest stage when none is that large.

    Args:
        model: a timm model with one logit.
        image_size: the square input side the model runs at.
        layer: ``auto``, a timm feature-stage index (``2``, ``-1`` = last) or a module name (``layer3``).
        method: ``auto``, ``cam``, ``gradcam``, ``gradcam++``, ``layercam`` or ``hirescam``.
        min_side: the smallest map side ``auto`` accepts.
        shifts: translations per axis the maps are averaged over (1 = none).

    Raises:
        UserError: unknown method or layer, or classic CAM asked for where it is not defined.
    """
    if method not in METHODS:
        raise UserError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if not 1 <= int(shifts) <= MAX_SHIFTS:
        raise UserError(f"--shifts {shifts}: choose 1 (no shift averaging) to {MAX_SHIFTS} translations per axis")
    spec = _resolve_method_and_layer(model, image_size, str(layer), method, min_side)
    return CamSpec(spec.method, spec.layer, spec.map_side, int(shifts) if spec.map_side else 1)


def _resolve_method_and_layer(model: nn.Module, image_size: int, layer: str, method: str, min_side: int) -> CamSpec:
    """``resolve_layer`` without the shifts."""
    stages = feature_stages(model)
    final_side = map_side(image_size, int(stages[-1]["reduction"])) if stages else 1
    if method == CAM:
        if str(layer) != AUTO or not has_gap_linear_head(model):
            raise UserError(
                "--method cam: classic CAM needs an average-pool + linear head and uses the final feature map; "
                "use --method gradcam to choose --layer"
            )
        return CamSpec(CAM, None, final_side)
    if method == AUTO and str(layer) == AUTO and final_side >= min_side and has_gap_linear_head(model):
        return CamSpec(CAM, None, final_side)
    grad_method = INTERMEDIATE_METHOD if method == AUTO else method
    if str(layer) != AUTO:
        name, stride = _named_stage(stages, layer, model)
        return CamSpec(grad_method, name, map_side(image_size, stride) if stride else 0)
    if not stages:
        raise UserError("this model has no timm feature_info; pass --layer with a module name")
    sides = [map_side(image_size, int(s["reduction"])) for s in stages]
    fine = [i for i, side in enumerate(sides) if side >= min_side]
    index = fine[-1] if fine else int(np.argmax(sides))
    return CamSpec(grad_method, str(stages[index]["module"]), sides[index])


# ------------------------------------------------------------------------------------------------ maps
def _normalise(maps: np.ndarray) -> np.ndarray:
    """ReLU, then divide each map by its maximum (all-zero maps stay zero)."""
    maps = np.maximum(maps, 0.0)
    peak = maps.reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1)
    return (maps / np.where(peak > 0, peak, 1.0)).astype(np.float32)


@torch.no_grad()
def classic_cam(model: nn.Module, inputs: torch.Tensor) -> np.ndarray:
    """Classic CAM (Zhou et al. 2016) for the single logit: the head's weights applied to the final feature map.

    Returns:
        ``N x H x W`` maps at the input size, ReLU'd and divided by their maximum.
    """
    model.eval()
    timm_model: Any = model
    features = timm_model.forward_features(inputs)
    weight = timm_model.get_classifier().weight[0].to(features.dtype)
    maps = torch.einsum("c,nchw->nhw", weight, features).unsqueeze(1)
    maps = F.interpolate(maps.float(), size=inputs.shape[-2:], mode="bilinear", align_corners=False)
    return _normalise(maps[:, 0].cpu().numpy())


def _token_reshape(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Turn transformer tokens ``N x L x C`` into ``N x C x h x w`` maps (prefix tokens dropped); NCHW passes."""
    prefix = int(getattr(model, "num_prefix_tokens", 0))

    def reshape(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.dim() != 3:
            return tensor
        tokens = tensor[:, prefix:]
        side = math.isqrt(tokens.shape[1])
        return tokens[:, : side * side].reshape(tokens.shape[0], side, side, -1).permute(0, 3, 1, 2)

    return reshape


def grad_cam(model: nn.Module, inputs: torch.Tensor, layer: str, method: str = GRADCAM) -> np.ndarray:
    """A gradient-based map of the abnormal logit at module ``layer``, via pytorch-grad-cam.

    Args:
        model: the network (one logit).
        inputs: a normalised ``N x C x H x W`` batch.
        layer: module name of the target layer.
        method: ``gradcam``, ``gradcam++``, ``layercam`` or ``hirescam``.

    Returns:
        ``N x H x W`` maps at the input size in [0, 1].
    """
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

    cls = {GRADCAM: GradCAM, GRADCAM_PP: GradCAMPlusPlus, LAYERCAM: LayerCAM, HIRESCAM: HiResCAM}[method]
    target_layer = model.get_submodule(layer)
    # An input that requires grad gives the activations gradients even when the member's parameters are frozen.
    inputs = inputs.detach().requires_grad_(True)
    with cls(model, [target_layer], reshape_transform=_token_reshape(model)) as cam:
        maps = cam(inputs, targets=[BinaryClassifierOutputTarget(1)] * len(inputs))
    return _normalise(np.asarray(maps, dtype=np.float32))


def translate(array: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Move the content of ``... x H x W`` arrays by ``dx`` columns and ``dy`` rows, filling with zeros."""
    out = np.zeros_like(array)
    height, width = array.shape[-2:]
    rows_to, rows_from = _span(dy, height), _span(-dy, height)
    cols_to, cols_from = _span(dx, width), _span(-dx, width)
    out[..., rows_to, cols_to] = array[..., rows_from, cols_from]
    return out


def _span(offset: int, length: int) -> slice:
    """The destination slice of a zero-filled move by ``offset`` along an axis of ``length``."""
    return slice(max(0, offset), length + min(0, offset))


def member_maps(
    member: TrainedModel, squares: np.ndarray, spec: CamSpec, device: torch.device | str = "cpu"
) -> np.ndarray:
    """Maps of one member for a batch of uint8 ``N x S x S`` squares at its input size (``N x S x S``, [0, 1]).

    With ``spec.shifts > 1`` every square is also explained translated by fractions of a map cell (all copies in
    one batch); each map is moved back, normalised, and the copies are averaged.
    """
    offsets = spec.offsets(squares.shape[-1])
    copies = np.concatenate([translate(squares, dx, dy) for dx, dy in offsets])
    inputs = member.normalizer(torch.as_tensor(copies).unsqueeze(1).to(device))
    member.model.eval()
    if spec.method == CAM:
        maps = classic_cam(member.model, inputs)
    else:
        maps = grad_cam(member.model, inputs, str(spec.layer), spec.method)
    maps = maps.reshape(len(offsets), len(squares), *maps.shape[1:])
    back = [translate(maps[k], -dx, -dy) for k, (dx, dy) in enumerate(offsets)]
    return _normalise(np.mean(back, axis=0)) if len(offsets) > 1 else maps[0]


# ------------------------------------------------------------------------------------------------ ensemble
class EnsembleCam:
    """Weighted mean of the members' maps (weights per body part), on each image's original pixels."""

    def __init__(
        self,
        members: Sequence[TrainedModel],
        weights: Weights,
        layer: str | int = AUTO,
        method: str = AUTO,
        device: torch.device | str | None = None,
        tta: bool = False,
        shifts: int = DEFAULT_SHIFTS,
    ) -> None:
        from muratune.trainables.models import select_device

        self.members = list(members)
        self.weights = weights
        self.tta = tta
        self.device = torch.device(device) if device is not None else select_device()
        self.specs = [resolve_layer(m.model, m.image_size, layer, method, shifts=shifts) for m in self.members]
        for member in self.members:
            member.model.to(self.device)

    @classmethod
    def from_predictor(
        cls, predictor: StudyPredictor, layer: str | int = AUTO, method: str = AUTO, shifts: int = DEFAULT_SHIFTS
    ) -> EnsembleCam:
        """Explain a loaded ``StudyPredictor`` (its members, weights, TTA setting and device)."""
        return cls(predictor.members, predictor.weights, layer, method, predictor.device, predictor.tta, shifts)

    def describe(self) -> dict[str, str]:
        """Method and layer of each member, by member name."""
        return {m.name: spec.describe() for m, spec in zip(self.members, self.specs, strict=True)}

    def __call__(self, images: Sequence[np.ndarray], body_parts: Sequence[str | None]) -> list[CamResult]:
        """Ensemble maps and probabilities for a batch of original 2-D uint8 images (any sizes)."""
        rows = weights_for(self.weights, list(body_parts))
        heatmaps = [np.zeros(img.shape[:2], dtype=np.float32) for img in images]
        probs = np.zeros(len(images))
        for j, (member, spec) in enumerate(zip(self.members, self.specs, strict=True)):
            if not (rows[:, j] > 0).any():
                continue
            mode = str(member.data_config["resize_mode"])
            placed = [resize_square(img, member.image_size, mode) for img in images]
            squares = np.stack([square for square, _ in placed])
            maps = member_maps(member, squares, spec, self.device)
            member_probs = member.predict(squares, self.device)
            if self.tta:  # as the predictor does: mean over the image and its horizontal flip
                flipped = np.ascontiguousarray(squares[..., ::-1])
                member_probs = (member_probs + member.predict(flipped, self.device)) / 2
            for i, (_, geo) in enumerate(placed):
                heatmaps[i] += rows[i, j] * original_map(maps[i], geo)
            probs += rows[:, j] * member_probs
        total = rows.sum(axis=1)
        return [CamResult(heatmaps[i] / total[i], float(probs[i] / total[i])) for i in range(len(images))]


def original_map(square_map: np.ndarray, geo: Geometry) -> np.ndarray:
    """A map over the square model input, mapped onto the original pixels (padding removed) and clipped to [0, 1]."""
    return np.clip(unsquare(square_map.astype(np.float32), geo), 0.0, 1.0)
