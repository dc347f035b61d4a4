"""Tests for muratune.trainables.models: fine-tune depth on real timm models, local weights, name checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from muratune.errors import UserError
from muratune.trainables.models import (
    check_backbone,
    count_groups,
    create_model,
    find_local_weights,
    head_parameter_names,
    set_finetune_depth,
)

# Per family: parameter-name prefixes trainable at depth 0 (timm's last coarse group: the classifier, plus the
# final norm or head conv where the family's group_matcher puts them there) and the extra ones at depth 1.
FAMILIES = {
    "resnet10t": (("fc.",), ("layer4.",)),
    "densenet121": (("classifier.", "features.norm5."), ("features.denseblock4.",)),
    "mobilenetv3_small_050": (("classifier.", "conv_head."), ("blocks.5.",)),
    "convnext_atto": (("head.",), ("stages.3.",)),
    "efficientnet_b0": (("classifier.",), ("blocks.6.", "conv_head.", "bn2.")),
}


def trainable(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("backbone", list(FAMILIES))
def test_finetune_depth_freezes_expected_parameters(backbone: str) -> None:
    head_prefixes, last_prefixes = FAMILIES[backbone]
    model = create_model(backbone, in_chans=1, finetune_depth=0)
    names = [name for name, _ in model.named_parameters()]
    head = head_parameter_names(model)
    assert head and all(name.startswith(head_prefixes) for name in head)

    expected0 = {name for name in names if name.startswith(head_prefixes)}
    assert trainable(model) == expected0
    assert head <= trainable(model)

    set_finetune_depth(model, 1)
    expected1 = expected0 | {name for name in names if name.startswith(last_prefixes)}
    assert trainable(model) == expected1
    assert expected1 > expected0

    set_finetune_depth(model, "all")
    assert trainable(model) == set(names)


@pytest.mark.parametrize("backbone", ["resnet10t", "convnext_atto", "mobilenetv3_small_050"])
def test_trainable_counts_grow_with_depth(backbone: str) -> None:
    model = create_model(backbone, in_chans=1)
    total = sum(p.numel() for p in model.parameters())
    assert count(model) == total  # default depth is 'all'
    groups = count_groups(model)
    assert groups >= 4
    counts = [set_finetune_depth(model, depth) for depth in range(groups + 1)]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    assert counts[-1] == total
    for depth in range(groups + 3):
        assert set_finetune_depth(model, depth) == count(model)
        assert head_parameter_names(model) <= trainable(model)
    for depth in (groups + 1, groups + 2, groups + 5):  # deeper than the model: everything
        assert set_finetune_depth(model, depth) == total
    assert set_finetune_depth(model, "all") == total


def test_frozen_parameters_get_no_gradient() -> None:
    model = create_model("resnet10t", in_chans=1, finetune_depth=1)
    model(torch.randn(2, 1, 64, 64)).sum().backward()
    assert model.fc.weight.grad is not None and model.layer4[0].conv1.weight.grad is not None
    assert model.layer1[0].conv1.weight.grad is None and model.conv1[0].weight.grad is None


@pytest.mark.parametrize("depth", [-1, "some", 1.5])
def test_bad_depth_is_a_user_error(depth: object) -> None:
    model = create_model("resnet10t", in_chans=1)
    with pytest.raises(UserError, match="finetune_depth"):
        set_finetune_depth(model, depth)  # type: ignore[arg-type]


def test_single_logit_and_grayscale_input() -> None:
    model = create_model("resnet10t", in_chans=1)
    assert model(torch.randn(3, 1, 64, 64)).shape == (3, 1)
    assert model.conv1[0].in_channels == 1


@pytest.fixture(scope="module")
def imagenet_resnet() -> dict[str, torch.Tensor]:
    """The state dict of an RGB, 1000-class resnet10t, as a pretrained file would hold it."""
    torch.manual_seed(0)
    source = timm.create_model("resnet10t", num_classes=1000, in_chans=3)
    return {k: v.detach().clone().contiguous() for k, v in source.state_dict().items()}


def assert_loaded(model: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert torch.equal(state["layer1.0.conv1.weight"], saved["layer1.0.conv1.weight"])
    assert torch.equal(state["layer4.0.bn1.running_var"], saved["layer4.0.bn1.running_var"])
    # timm's adapt_input_conv turns an RGB first conv into a grayscale one by summing over the channels.
    assert state["conv1.0.weight"].shape == (24, 1, 3, 3)
    assert torch.allclose(state["conv1.0.weight"], saved["conv1.0.weight"].sum(dim=1, keepdim=True))
    assert state["fc.weight"].shape == (1, 512)  # the 1000-class head is dropped, a fresh one-logit head made


def test_pretrained_from_local_safetensors(tmp_path: Path, imagenet_resnet: dict[str, torch.Tensor]) -> None:
    save_file(imagenet_resnet, str(tmp_path / "resnet10t.safetensors"))
    assert find_local_weights(tmp_path, "resnet10t") == tmp_path / "resnet10t.safetensors"
    model = create_model("resnet10t", pretrained=True, weights_dir=tmp_path, in_chans=1)
    assert_loaded(model, imagenet_resnet)


def test_pretrained_from_local_pth(tmp_path: Path, imagenet_resnet: dict[str, torch.Tensor]) -> None:
    torch.save(imagenet_resnet, tmp_path / "resnet10t.pth")
    model = create_model("resnet10t", pretrained=True, weights_dir=str(tmp_path), in_chans=1, finetune_depth=0)
    assert_loaded(model, imagenet_resnet)
    assert trainable(model) == {"fc.weight", "fc.bias"}


def test_pretrained_from_hugging_face_layout(tmp_path: Path, imagenet_resnet: dict[str, torch.Tensor]) -> None:
    (tmp_path / "resnet10t").mkdir()
    save_file(imagenet_resnet, str(tmp_path / "resnet10t" / "model.safetensors"))
    model = create_model("resnet10t", pretrained=True, weights_dir=tmp_path, in_chans=1)
    assert_loaded(model, imagenet_resnet)


def test_missing_weights_file_names_the_folder(tmp_path: Path) -> None:
    (tmp_path / "resnet18.safetensors").write_bytes(b"")  # another model's weights do not count
    with pytest.raises(UserError, match=str(tmp_path)) as err:
        create_model("resnet10t", pretrained=True, weights_dir=tmp_path, in_chans=1)
    assert "resnet10t" in str(err.value)


def test_unknown_backbone_lists_close_names() -> None:
    with pytest.raises(UserError, match="resnet10x") as err:
        create_model("resnet10x")
    assert "resnet10t" in str(err.value)
    with pytest.raises(UserError, match="timm.list_models"):
        check_backbone("no-such-network-at-all")
    check_backbone("resnet50.a1_in1k")  # a pretrained tag is accepted


def test_frozen_batchnorm_keeps_its_statistics_in_training():
    import torch

    from muratune.trainables.models import create_model, freeze_frozen_batchnorm

    model = create_model("resnet10t", in_chans=1, finetune_depth=0)
    model.train()
    freeze_frozen_batchnorm(model)
    before = model.bn1.running_mean.clone()
    model(torch.randn(4, 1, 64, 64) * 5 + 3)
    assert torch.equal(model.bn1.running_mean, before)
    assert not model.bn1.training
