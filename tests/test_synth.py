"""Tests for the synthetic MURA generator: layout, labels, boxes, determinism and refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from muratune.constants import BODY_PARTS
from muratune.data.synth import (
    FINDING_KINDS,
    ROOT_NAME,
    draw_image,
    encode_png,
    generate_dataset,
    parse_difficulty,
    plan_dataset,
    render_image,
)
from muratune.data.synth import draw as synth_draw
from muratune.data.synth.draw import _gaussian_levels
from muratune.data.synth.geometry import _box_kernel
from muratune.data.synth.plan import BOXES_HEADER
from muratune.errors import UserError
from tests.helpers.files import tree_digest

SMALL = {"studies": 60, "seed": 3, "difficulty": "easy", "long_side": 256, "workers": 1}


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, **SMALL)
    return out


def test_layout_and_csvs(dataset: Path) -> None:
    root = dataset / ROOT_NAME
    for split in ("train", "valid"):
        images = _lines(root / f"{split}_image_paths.csv")
        studies = _lines(root / f"{split}_labeled_studies.csv")
        assert images and studies
        study_labels = {}
        for row in studies:
            study_path, label = row.rsplit(",", 1)
            assert study_path.startswith(f"{ROOT_NAME}/{split}/") and study_path.endswith("/")
            _, _, part, patient, study = study_path.rstrip("/").split("/")
            assert part in BODY_PARTS
            assert patient.startswith("patient") and len(patient) == len("patient") + 5 and patient[7:].isdigit()
            assert study.endswith("_positive" if label == "1" else "_negative") and label in ("0", "1")
            study_labels[study_path] = label
        for image_path in images:
            assert image_path.startswith(f"{ROOT_NAME}/{split}/") and image_path.endswith(".png")
            assert (dataset / image_path).is_file()
            assert image_path.rsplit("/", 1)[0] + "/" in study_labels
        # Every study has images numbered from image1 without holes.
        for study_path in study_labels:
            names = sorted(p.rsplit("/", 1)[1] for p in images if p.startswith(study_path))
            assert names == [f"image{i}.png" for i in range(1, len(names) + 1)]
            assert 1 <= len(names) <= 4
    on_disk = {str(p.relative_to(dataset)) for p in root.rglob("*.png")}
    listed = set(_lines(root / "train_image_paths.csv")) | set(_lines(root / "valid_image_paths.csv"))
    assert on_disk == listed


def test_study_numbers_restart_per_patient(dataset: Path) -> None:
    root = dataset / ROOT_NAME
    for split in ("train", "valid"):
        by_patient: dict[str, list[int]] = {}
        for row in _lines(root / f"{split}_labeled_studies.csv"):
            parts = row.rsplit(",", 1)[0].rstrip("/").split("/")
            by_patient.setdefault(parts[3], []).append(int(parts[4].split("_")[0].removeprefix("study")))
        for numbers in by_patient.values():
            assert sorted(numbers) == list(range(1, len(numbers) + 1))


def test_patients_disjoint_between_splits(dataset: Path) -> None:
    root = dataset / ROOT_NAME

    def patients(split: str) -> set[str]:
        return {row.split("/")[3] for row in _lines(root / f"{split}_labeled_studies.csv")}

    assert patients("train").isdisjoint(patients("valid"))


def test_boxes_match_labels_and_bounds(dataset: Path) -> None:
    root = dataset / ROOT_NAME
    rows = _lines(root / "boxes.csv")
    assert rows[0] == BOXES_HEADER
    boxed_studies: set[str] = set()
    for row in rows[1:]:
        image_path, x0, y0, x1, y1, kind = row.split(",")
        assert kind in FINDING_KINDS
        image = cv2.imread(str(dataset / image_path), cv2.IMREAD_UNCHANGED)
        height, width = image.shape[:2]
        x0, y0, x1, y1 = int(x0), int(y0), int(x1), int(y1)
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert "_positive/" in image_path
        boxed_studies.add(image_path.rsplit("/", 1)[0] + "/")
    for split in ("train", "valid"):
        for row in _lines(root / f"{split}_labeled_studies.csv"):
            study_path, label = row.rsplit(",", 1)
            assert (study_path in boxed_studies) == (label == "1")


def test_images_look_like_radiographs(dataset: Path) -> None:
    paths = sorted((dataset / ROOT_NAME).rglob("*.png"))
    channels, long_sides = [], []
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert image.dtype == "uint8"
        channels.append(1 if image.ndim == 2 else image.shape[2])
        long_sides.append(max(image.shape[:2]))
        gray = image if image.ndim == 2 else image[..., 0]
        if image.ndim == 3:  # RGB images are gray replicated
            assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
        assert gray.mean() < 140  # dark background, bright bone
        assert gray.max() > 150
    assert set(channels) == {1, 3}
    assert channels.count(3) < len(channels) / 2
    assert 256 * 0.84 <= min(long_sides) and max(long_sides) <= 256 * 1.16


def test_same_seed_same_bytes_any_workers(tmp_path: Path, dataset: Path) -> None:
    generate_dataset(tmp_path / "a", **{**SMALL, "workers": 2})
    assert tree_digest(tmp_path / "a" / ROOT_NAME) == tree_digest(dataset / ROOT_NAME)


def test_different_seed_differs(tmp_path: Path, dataset: Path) -> None:
    generate_dataset(tmp_path / "b", **{**SMALL, "seed": 4})
    assert tree_digest(tmp_path / "b" / ROOT_NAME) != tree_digest(dataset / ROOT_NAME)


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    args = {**SMALL, "studies": 8, "long_side": 64}
    generate_dataset(tmp_path, **args)
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        generate_dataset(tmp_path, **args)
    summary = generate_dataset(tmp_path, **{**args, "seed": 9}, overwrite=True)
    assert summary.root == tmp_path / ROOT_NAME
    assert [p.name for p in tmp_path.iterdir()] == [ROOT_NAME]  # no temporary folders left behind
    assert "studies" in str(summary) and "images/s" in str(summary)


@pytest.mark.parametrize("bad", ["extreme", "0", "1.5", "-0.2", "nan", ""])
def test_unknown_difficulty(tmp_path: Path, bad: str) -> None:
    with pytest.raises(UserError, match="difficulty"):
        generate_dataset(tmp_path, **{**SMALL, "difficulty": bad})
    assert not (tmp_path / ROOT_NAME).exists()


def test_parse_difficulty() -> None:
    assert parse_difficulty("easy") > parse_difficulty("medium") > parse_difficulty("hard")
    assert parse_difficulty("0.25") == 0.25 and parse_difficulty(1) == 1.0


def test_plan_proportions_and_valid_coverage() -> None:
    plan = plan_dataset(400, seed=0, valid_share=0.1)
    valid = [s for s in plan if s.split == "valid"]
    assert len(plan) == 400 and len(valid) == 40
    assert {(s.body_part, s.label) for s in valid} == {(p, label) for p in BODY_PARTS for label in (0, 1)}
    train = [s for s in plan if s.split == "train"]
    assert 0.3 < sum(s.label for s in train) / len(train) < 0.5
    # Wrist and shoulder are the largest body parts in MURA, humerus the smallest.
    count = {p: sum(s.body_part == p for s in train) for p in BODY_PARTS}
    assert count["XR_WRIST"] > count["XR_HUMERUS"] and count["XR_SHOULDER"] > count["XR_FOREARM"]
    for study in plan:
        assert any(im.finding for im in study.images) == bool(study.label)


def test_rendered_images_do_not_share_memory() -> None:
    # The drawing reuses work arrays between images; what it returns must stay the caller's.
    first, _ = render_image("XR_WRIST", "lesion", (0, 1), long_side=128)
    kept = first.copy()
    second, _ = render_image("XR_WRIST", "lesion", (0, 2), long_side=128)
    assert np.array_equal(first, kept) and not np.array_equal(first, second)
    again, _ = render_image("XR_WRIST", "lesion", (0, 1), long_side=128)
    assert np.array_equal(first, again)


def test_png_round_trip_gray_and_rgb() -> None:
    specs = [im for study in plan_dataset(40, seed=1) for im in study.images]
    for spec in (next(im for im in specs if not im.rgb), next(im for im in specs if im.rgb)):
        image, _ = draw_image(spec, 1, 1.0, 96)
        decoded = cv2.imdecode(np.frombuffer(encode_png(image), np.uint8), cv2.IMREAD_UNCHANGED)
        assert decoded.shape == image.shape == ((*image.shape[:2], 3) if spec.rgb else image.shape[:2])
        assert np.array_equal(decoded, image)


def test_noise_levels_are_a_unit_gaussian() -> None:
    levels = _gaussian_levels()
    assert levels.shape == (256,) and np.all(np.diff(levels) > 0)
    assert abs(float(levels.mean())) < 1e-6 and abs(float(levels.std()) - 1.0) < 1e-5
    assert np.allclose(levels, -levels[::-1], atol=1e-5)  # symmetric


@pytest.mark.parametrize("width", [1.0, 5.0, 6.0, 6.25, 9.5])
def test_box_kernel_is_a_centred_box(width: float) -> None:
    kernel = _box_kernel(width).astype(np.float64)
    assert kernel.size % 2 == 1 and np.allclose(kernel, kernel[::-1])  # odd and symmetric: no half-pixel shift
    assert np.isclose(kernel.sum(), 1.0)
    taps = np.arange(kernel.size) - kernel.size // 2
    assert abs((kernel * taps**2).sum() - width**2 / 12) < 0.2  # the spread of a continuous box that wide
    if width % 2 == 1:
        assert np.allclose(kernel, 1 / width)


@pytest.mark.parametrize("body_part", ["XR_HAND", "XR_SHOULDER"])
def test_low_resolution_tissue_matches_full_resolution(body_part: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The soft tissue is drawn at 1/4 resolution at 512 px; drawn at full resolution it must look the same. Noise
    # has its own random stream, so the two images differ only by the tissue layer.
    fast, boxes = render_image(body_part, "fracture", (0, 7), long_side=512)
    monkeypatch.setattr(synth_draw, "_tissue_factor", lambda long_side: 1)
    full, full_boxes = render_image(body_part, "fracture", (0, 7), long_side=512)
    diff = fast.astype(np.int16) - full
    assert boxes == full_boxes
    assert abs(diff.mean()) < 0.5 and np.abs(diff).mean() < 0.8 and np.abs(diff).max() <= 24  # gray levels


def test_cli_valid_share_sets_the_test_split(tmp_path: Path) -> None:
    # A big test split without a big train split: 60 of 100 studies in valid, the rest in train.
    result = subprocess.run(
        [sys.executable, "-m", "muratune.cli", "data", "synth", str(tmp_path / "d"), "--studies", "100"]
        + ["--valid-share", "0.6", "--size", "32", "--workers", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    root = tmp_path / "d" / ROOT_NAME
    assert len(_lines(root / "valid_labeled_studies.csv")) == 60
    assert len(_lines(root / "train_labeled_studies.csv")) == 40


def test_cli_valid_share_of_one_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "muratune.cli", "data", "synth", str(tmp_path / "d"), "--valid-share", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--valid-share" in lines[0], result.stderr
    assert not (tmp_path / "d").exists()
