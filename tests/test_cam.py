"""CAM export: maps that peak on known evidence, boxes, mapping back to original pixels, overlays, CLI and score."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from timm.layers import SelectAdaptivePool2d
from torch import nn

from muratune.cam.boxes import Box, largest_component_box, localise, peak
from muratune.cam.cam import (
    CAM,
    GRADCAM,
    GRADCAM_PP,
    HIRESCAM,
    LAYERCAM,
    CamSpec,
    EnsembleCam,
    classic_cam,
    grad_cam,
    member_maps,
    original_map,
    resolve_layer,
    translate,
)
from muratune.cam.export import ImageSelection, export_cams
from muratune.cam.overlay import overlay
from muratune.cam.score import CHANCE, MEAN_IOU, POINTING_GAME, Prediction, localisation_score, read_boxes
from muratune.cli import main
from muratune.data.images import resize_square, unsquare
from muratune.ensemble.trained import TrainedModel
from muratune.errors import UserError
from muratune.trainables import checkpoint as ckpt

TOY_CONFIG = {"image_size": 64, "resize_mode": "pad", "in_chans": 1, "mean": [0.0], "std": [1.0]}
STUDY = "MURA-v1.1/valid/XR_WRIST/patient00001/study1_positive"


class BrightPatchNet(nn.Module):
    """Evidence = pixels brighter than 0.5: two ReLU conv stages, global average pooling and one linear logit."""

    def __init__(self, dark: bool = False) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(2, 2, 3, stride=2, padding=1), nn.ReLU())
        self.global_pool = SelectAdaptivePool2d(pool_type="avg", flatten=True)
        self.fc = nn.Linear(2, 1)
        self.feature_info = [
            {"module": "stage1", "reduction": 2, "num_chs": 2},
            {"module": "stage2", "reduction": 4, "num_chs": 2},
        ]
        with torch.no_grad():
            for conv in (self.stage1[0], self.stage2[0]):
                conv.weight.zero_()
            # dark=True responds to pixels darker than 0.5 instead (a model with other evidence).
            self.stage1[0].weight[:, 0, 1, 1] = -1.0 if dark else 1.0
            self.stage1[0].bias.fill_(0.5 if dark else -0.5)
            self.stage2[0].weight[0, 0, 1, 1] = self.stage2[0].weight[1, 1, 1, 1] = 1.0
            self.stage2[0].bias.zero_()
            self.fc.weight.fill_(1.0)
            self.fc.bias.fill_(-0.1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage2(self.stage1(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.global_pool(self.forward_features(x)))


def _patch_image(height: int, width: int, rows: slice, cols: slice, background: int = 60) -> np.ndarray:
    image = np.full((height, width), background, dtype=np.uint8)
    image[rows, cols] = 255
    return image


def _inside(point: tuple[int, int], rows: slice, cols: slice, margin: int = 0) -> bool:
    x, y = point
    return cols.start - margin <= x < cols.stop + margin and rows.start - margin <= y < rows.stop + margin


# ------------------------------------------------------------------------------------------------ maps
@pytest.mark.parametrize("method", [CAM, GRADCAM, GRADCAM_PP, LAYERCAM, HIRESCAM])
def test_maps_peak_on_the_bright_patch(method):
    rows, cols = slice(40, 52), slice(8, 20)
    image = _patch_image(64, 64, rows, cols)
    inputs = torch.as_tensor(image, dtype=torch.float32)[None, None] / 255
    model = BrightPatchNet().eval()
    maps = classic_cam(model, inputs) if method == CAM else grad_cam(model, inputs, "stage1", method)
    assert maps.shape == (1, 64, 64) and maps.max() == pytest.approx(1.0)
    assert _inside(peak(maps[0]), rows, cols)
    assert maps[0][rows, cols].mean() > 5 * maps[0][:32, 32:].mean() + 1e-6  # far quadrant is cold


def test_layer_defaults_follow_the_map_size():
    from muratune.trainables.models import create_model

    resnet = create_model("resnet10t")
    small = resolve_layer(resnet, 64)
    assert (small.method, small.layer, small.map_side, small.shifts) == (LAYERCAM, "layer2", 8, 2)
    assert small.offsets(64) == [(0, 0), (4, 0), (0, 4), (4, 4)]  # half an 8-pixel cell
    assert resolve_layer(resnet, 64, shifts=1).offsets(64) == [(0, 0)]
    assert resolve_layer(resnet, 256).method == CAM  # 8x8 final map: the paper's classic CAM
    assert resolve_layer(resnet, 64, layer=3).layer == "layer3"
    assert resolve_layer(resnet, 64, layer="-1", method=GRADCAM_PP) == resolve_layer(resnet, 64, "layer4", GRADCAM_PP)
    assert resolve_layer(BrightPatchNet(), 64).method == CAM
    assert resolve_layer(BrightPatchNet(), 64, min_side=32).layer == "stage1"
    with pytest.raises(UserError, match="classic CAM"):
        resolve_layer(resnet, 64, layer="layer2", method=CAM)
    with pytest.raises(UserError, match="no such module"):
        resolve_layer(resnet, 64, layer="layer9")
    with pytest.raises(UserError, match="--method"):
        resolve_layer(resnet, 64, method="lime")
    with pytest.raises(UserError, match="--shifts"):
        resolve_layer(resnet, 64, shifts=0)


class CoarseBrightNet(nn.Module):
    """Evidence = bright pixels, pooled into 8x8-pixel cells (an 8x8 map at 64 px), then averaged to one logit."""

    def __init__(self) -> None:
        super().__init__()
        self.detect = nn.Conv2d(1, 1, 1)
        self.cells = nn.Sequential(nn.ReLU(), nn.AvgPool2d(8))
        with torch.no_grad():
            self.detect.weight.fill_(1.0)
            self.detect.bias.fill_(-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cells(self.detect(x)).mean(dim=(2, 3))


def test_translate_moves_content_and_fills_with_zeros():
    array = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    moved = translate(array, 1, -1)  # one column right, one row up
    np.testing.assert_array_equal(moved[0], [[0, 4, 5, 6], [0, 8, 9, 10], [0, 0, 0, 0]])
    np.testing.assert_array_equal(translate(translate(array, 2, 1), -2, -1)[0, :2, :2], array[0, :2, :2])


@pytest.mark.parametrize("method", [GRADCAM, LAYERCAM])
def test_shift_averaging_moves_the_peak_off_the_coarse_cell_centre(method):
    # A 4-pixel patch (half a cell) off the 8-pixel cell grid: one pass peaks on a flat cell, outside the patch;
    # averaging over half-cell shifts puts the peak on the patch.
    member = TrainedModel("coarse", CoarseBrightNet().eval(), {"data_config": TOY_CONFIG})
    hits = {1: 0, 2: 0}
    starts = [(6, 13), (14, 29), (22, 45), (38, 5), (46, 53)]
    for row, col in starts:
        rows, cols = slice(row, row + 4), slice(col, col + 4)
        image = _patch_image(64, 64, rows, cols)
        for shifts in hits:
            maps = member_maps(member, image[None], CamSpec(method, "cells", 8, shifts))
            hits[shifts] += _inside(peak(maps[0]), rows, cols)
    assert hits == {1: 0, 2: len(starts)}


def test_ensemble_map_lands_on_original_pixels_with_per_body_part_weights():
    rows, cols = slice(20, 40), slice(150, 180)
    image = _patch_image(100, 200, rows, cols)  # wide image: padded above and below in the square
    members = [
        TrainedModel("bright", BrightPatchNet().eval(), {"data_config": TOY_CONFIG}),
        TrainedModel("dark", BrightPatchNet(dark=True).eval(), {"data_config": TOY_CONFIG}),
    ]
    weights = {"all": np.array([1.0, 0.0]), "XR_HAND": np.array([0.0, 1.0])}
    explainer = EnsembleCam(members, weights, layer="stage1", method=GRADCAM, device="cpu")
    wrist, hand = explainer([image, image], ["XR_WRIST", "XR_HAND"])
    assert wrist.heatmap.shape == (100, 200) and 0 <= wrist.prob <= 1
    assert _inside(peak(wrist.heatmap), rows, cols, margin=3)
    assert not _inside(peak(hand.heatmap), rows, cols)
    assert explainer.describe() == {
        "bright": "gradcam@stage1 (32x32, 2x2 shifts)",
        "dark": "gradcam@stage1 (32x32, 2x2 shifts)",
    }


def test_unsquare_undoes_padding_exactly_for_a_non_square_image():
    original = np.zeros((32, 64), dtype=np.uint8)  # 2x upscale into 128, 32 rows of padding above
    square, geo = resize_square(original, 128, "pad")
    assert (geo.pad_x, geo.pad_y, geo.scale_x) == (0, 32, 2.0)
    marked = np.zeros((128, 128), dtype=np.float32)
    marked[32 + 20 : 32 + 40, 40:80] = 1.0  # original rows 10..19, columns 20..39
    back = unsquare(marked, geo, interpolation=cv2.INTER_NEAREST)
    expected = np.zeros((32, 64), dtype=np.float32)
    expected[10:20, 20:40] = 1.0
    np.testing.assert_array_equal(back, expected)
    smooth = original_map(marked, geo)
    assert smooth.shape == (32, 64) and np.all(smooth[11:19, 21:39] == 1.0) and smooth[:8].max() == 0


# ------------------------------------------------------------------------------------------------ boxes
def test_box_is_the_largest_component_and_peak_the_maximum():
    heat = np.zeros((60, 80), dtype=np.float32)
    heat[5:25, 5:25] = 0.5  # large, lukewarm
    heat[40:44, 60:64] = 1.0  # small, hot
    assert largest_component_box(heat, 0.2) == Box(5, 5, 25, 25)
    assert largest_component_box(heat, 0.6) == Box(60, 40, 64, 44)
    loc = localise(heat)
    assert loc.peak == (60, 40) and loc.to_dict()["box"] == {"x0": 5, "y0": 5, "x1": 25, "y1": 25}
    assert localise(np.zeros((5, 5))).box is None


# ------------------------------------------------------------------------------------------------ score
def test_score_on_constructed_peaks_and_boxes(tmp_path: Path):
    csv = tmp_path / "boxes.csv"
    csv.write_text("image_path,x0,y0,x1,y1,kind\na.png,0,0,10,10,x\nb.png,50,50,60,60,x\nb.png,0,0,10,10,x\n")
    truth = read_boxes(csv)
    predictions = [
        Prediction("./a.png", (5, 5), Box(0, 0, 10, 20), 100, 100),  # hit, IoU 0.5, chance 0.01
        Prediction("b.png", (30, 30), Box(50, 50, 60, 60), 100, 100),  # miss, IoU 1.0, chance 0.02
        Prediction("normal.png", (1, 1), None, 100, 100),  # no true box: not scored
    ]
    score = localisation_score(predictions, truth)
    assert score[POINTING_GAME] == 0.5 and score[MEAN_IOU] == 0.75
    assert score[CHANCE] == pytest.approx(0.015) and score["n_images"] == 2
    assert Box(0, 0, 10, 10).iou(Box(5, 0, 15, 10)) == pytest.approx(1 / 3)
    bad = tmp_path / "bad.csv"
    bad.write_text("image_path,x0,y0\na.png,1,2\n")
    with pytest.raises(UserError, match="missing column"):
        read_boxes(bad)


# ------------------------------------------------------------------------------------------------ export
def _resnet_checkpoint(folder: Path) -> Path:
    """A random-weights resnet10t checkpoint folder (trial.json + model.safetensors)."""
    from muratune.trainables.models import create_model

    folder.mkdir(parents=True)
    config = {**TOY_CONFIG, "mean": [0.45], "std": [0.23]}
    (folder / ckpt.TRIAL_FILE).write_text(json.dumps({"backbone": "resnet10t", "data_config": config}))
    torch.manual_seed(0)
    ckpt.save_weights(create_model("resnet10t"), folder / ckpt.MODEL_FILE)
    return folder


def _run(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return int(exit_info.value.code or 0)


def test_overlays_for_gray_and_rgb_pngs(tmp_path: Path):
    study = tmp_path / STUDY
    study.mkdir(parents=True)
    gray = _patch_image(90, 60, slice(10, 30), slice(10, 30))
    Image.fromarray(gray).save(study / "image1.png")
    Image.fromarray(np.stack([gray, gray // 2, gray], axis=-1)).save(study / "image2.png")  # RGB
    out = tmp_path / "cams"
    summary = export_cams(
        _resnet_checkpoint(tmp_path / "member"), out, ImageSelection(study=study, root=tmp_path), progress=False
    )
    assert summary.n_images == 2 and summary.layers == {"member": "layercam@layer2 (8x8, 2x2 shifts)"}
    for rec in summary.records:
        drawn = cv2.imread(str(out / rec["png"]))
        assert drawn.shape[1:] == (60, 3) and drawn.shape[0] > 90  # caption band on top
        assert json.loads((out / rec["json"]).read_text())["image_path"] == f"{STUDY}/{rec['view']}.png"
    page = (out / "index.html").read_text()
    assert page.count("<section>") == 1 and "images/" in page and "http" not in page
    rgb = overlay(np.dstack([gray] * 3), np.zeros(gray.shape), caption="XR_WRIST <b>")
    assert rgb.shape[1:] == (60, 3)
    with pytest.raises(UserError, match="already exists"):
        export_cams(tmp_path / "member", out, ImageSelection(study=study), progress=False)


def test_cli_errors_are_one_line(tmp_path: Path, capsys):
    member = _resnet_checkpoint(tmp_path / "member")
    assert _run(["cam", str(member), "--out", str(tmp_path / "o")]) == 2
    assert "exactly one of --study" in capsys.readouterr().err
    study = tmp_path / "study"
    study.mkdir()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(study / "image1.png")
    assert _run(["cam", str(study), "--study", str(study), "--out", str(tmp_path / "o")]) == 2
    assert "not an ensemble folder" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_on_the_tiny_experiment(tiny_experiment: Path, synthetic_root: Path, tmp_path: Path, capsys):
    summary = pd.read_csv(tiny_experiment / "search_summary.csv", dtype={"trial_id": str})
    checkpoint = summary["checkpoint"].dropna().iloc[0]
    dataset = synthetic_root / "MURA-v1.1"
    out = tmp_path / "cams"
    args = ["cam", checkpoint, "--csv", str(dataset / "valid_image_paths.csv"), "--abnormal-only", "--out", str(out)]
    assert _run([*args, "--score", str(dataset / "boxes.csv"), "--layer", "3"]) == 0
    printed = capsys.readouterr().out
    assert "pointing game" in printed and "layer3" in printed
    score = json.loads((out / "score.json").read_text())
    assert score["n_images"] > 0 and 0 <= score["pointing_game"] <= 1 and 0 < score["chance"] < 0.2
    cams = json.loads((out / "cams.json").read_text())["images"]
    assert all("_positive/" in rec["study_path"] for rec in cams)
    assert all((out / rec["png"]).is_file() and (out / rec["json"]).is_file() for rec in cams)
    assert (out / "index.html").is_file()
    assert _run(args) == 2 and "--overwrite" in capsys.readouterr().err
