"""Model factory: any timm backbone with a one-logit head, local pretrained weights, and fine-tune depth."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from muratune.errors import UserError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def check_backbone(name: str) -> None:
    """Raise a UserError listing close timm names if ``name`` is not a timm model."""
    import timm

    if timm.is_model(name.split(".")[0]):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else "; see timm.list_models()"
    raise UserError(f"backbone {name!r} is not a timm model{hint}")


def find_local_weights(weights_dir: str | os.PathLike, backbone: str) -> Path:
    """Find a weights file for ``backbone`` in ``weights_dir``.

    Looked up, in order: ``<dir>/<backbone><suffix>`` and ``<dir>/<backbone>/model.safetensors`` or
    ``pytorch_model.bin`` (the Hugging Face layout), for suffixes .safetensors, .pth, .pt and .bin.
    """
    root = Path(weights_dir).expanduser()
    candidates = [root / f"{backbone}{suffix}" for suffix in WEIGHT_SUFFIXES]
    candidates += [root / backbone / "model.safetensors", root / backbone / "pytorch_model.bin"]
    for path in candidates:
        if path.is_file():
            return path
    raise UserError(f"{root}: no weights for {backbone!r}; expected one of {', '.join(p.name for p in candidates[:4])}")


def create_model(
    backbone: str,
    pretrained: bool = False,
    weights_dir: str | os.PathLike | None = None,
    in_chans: int = 1,
    drop_rate: float | None = None,
    finetune_depth: int | str = "all",
    **kwargs,
) -> nn.Module:
    """Create a timm model with a single abnormality logit.

    Args:
        backbone: any timm model name (optionally with a pretrained tag, e.g. ``resnet50.a1_in1k``).
        pretrained: load pretrained weights: from ``weights_dir`` when set, otherwise through timm's hub.
        weights_dir: folder of local weight files for air-gapped machines (see ``find_local_weights``).
        in_chans: 1 for grayscale input (timm adapts a pretrained first conv), or 3.
        drop_rate: dropout before the classifier; None keeps the model's default.
        finetune_depth: trailing parameter groups left trainable besides the head (``all`` = everything).
        **kwargs: passed to ``timm.create_model``; None values are dropped (None = model default).
    """
    import timm

    check_backbone(backbone)
    options = {k: v for k, v in dict(drop_rate=drop_rate, **kwargs).items() if v is not None}
    if pretrained and weights_dir:
        options["pretrained_cfg_overlay"] = {"file": str(find_local_weights(weights_dir, backbone))}
    try:
        model = timm.create_model(backbone, pretrained=pretrained, in_chans=in_chans, num_classes=1, **options)
    except (RuntimeError, OSError) as err:
        raise UserError(f"backbone {backbone!r}: could not create the model ({str(err).splitlines()[0]})") from None
    set_finetune_depth(model, finetune_depth)
    return model


def parameter_groups(model: nn.Module) -> list[list[str]]:
    """Return parameter names grouped by timm's coarse ``group_matcher``, from input to head.

    The last group holds the classifier (timm puts unmatched parameters, the head, last).
    """
    from timm.models import group_parameters

    timm_model: Any = model  # timm's hooks are not on nn.Module's type
    matcher = timm_model.group_matcher(coarse=True) if hasattr(model, "group_matcher") else None
    if matcher is None:
        return [[name for name, _ in model.named_parameters()]]
    grouped = group_parameters(model, matcher)
    return [list(grouped[k]) for k in sorted(grouped)]


def head_parameter_names(model: nn.Module) -> set[str]:
    """Return the names of the classifier's parameters."""
    timm_model: Any = model
    classifier = timm_model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(classifier, nn.Module):
        return set()
    ids = {id(p) for p in classifier.parameters()}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def set_finetune_depth(model: nn.Module, depth: int | str) -> int:
    """Freeze all but the head and the last ``depth`` parameter groups; return the trainable parameter count.

    ``depth = 0`` trains the head only; ``"all"`` trains everything. The meaning is the same for every timm
    family, because groups come from each model's own ``group_matcher``.
    """
    if depth == "all":
        for param in model.parameters():
            param.requires_grad_(True)
        return sum(p.numel() for p in model.parameters())
    if not isinstance(depth, int) or depth < 0:
        raise UserError(f"finetune_depth: must be 'all' or an integer >= 0 (got {depth!r})")
    groups = parameter_groups(model)
    body, head = groups[:-1], groups[-1]
    trainable = set(head) | head_parameter_names(model)
    for group in body[max(0, len(body) - depth) :] if depth else []:
        trainable.update(group)
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def freeze_frozen_batchnorm(model: nn.Module) -> None:
    """Put BatchNorm layers whose parameters are frozen in eval mode, so fine-tuning keeps their statistics.

    Call after ``model.train()``: a frozen pretrained stage should not drift its running mean and variance.
    """
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and params and not any(p.requires_grad for p in params):
            module.eval()


def count_groups(model: nn.Module) -> int:
    """Number of non-head parameter groups (the largest meaningful finetune depth)."""
    return len(parameter_groups(model)) - 1


def select_device(prefer_gpu: bool = True) -> torch.device:
    """Pick CUDA when available (and wanted), else MPS, else CPU."""
    if prefer_gpu and torch.cuda.is_available():
        return torch.device("cuda")
    if prefer_gpu and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
