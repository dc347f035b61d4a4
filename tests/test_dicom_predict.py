"""DICOM copies of PNG studies predict, explain and serve like the PNGs (MONOCHROME1/2, 12 bits stored in 16)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from muratune.constants import IMAGE_PATH, SPLIT, SPLIT_VALID, STUDY_PATH
from muratune.data.dicom import encode_dicom
from muratune.data.images import read_image
from muratune.data.index import load_index
from muratune.ensemble.predictor import StudyPredictor

pytestmark = pytest.mark.slow

VARIANTS = {"mono2-window": ("MONOCHROME2", True), "mono1-stored-range": ("MONOCHROME1", False)}


@pytest.fixture(scope="module")
def ensemble(tiny_experiment: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A greedy ensemble of the tiny experiment (built in a copy)."""
    from muratune.ensemble.build import build_ensembles

    exp = tmp_path_factory.mktemp("dicom") / "tiny"
    shutil.copytree(tiny_experiment, exp)
    build_ensembles(exp, size=3, strategies=["greedy"], echo=lambda _: None)
    return exp / "ensemble" / "greedy"


def _dicom_copy(png_root: Path, out: Path, photometric: str, window: bool) -> Path:
    """The valid split of a PNG dataset as DICOM files (12 of 16 bits) in the same MURA layout and CSVs."""
    dataset = png_root / "MURA-v1.1"
    lines = (dataset / "valid_image_paths.csv").read_text().split()
    for line in lines:
        target = out / line.replace(".png", ".dcm")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(encode_dicom(read_image(png_root / line), photometric=photometric, window=window))
    copy = out / "MURA-v1.1"
    (copy / "valid_image_paths.csv").write_text("".join(f"{line.replace('.png', '.dcm')}\n" for line in lines))
    shutil.copy2(dataset / "valid_labeled_studies.csv", copy / "valid_labeled_studies.csv")
    for name in ("train_image_paths.csv", "train_labeled_studies.csv"):  # index needs both splits; train unused
        (copy / name).write_text("")
    return out


def _valid(root: Path) -> pd.DataFrame:
    index = load_index(root)
    return index[index[SPLIT] == SPLIT_VALID].reset_index(drop=True)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_dicom_copies_predict_like_the_pngs(ensemble, synthetic_root, tmp_path, variant):
    photometric, window = VARIANTS[variant]
    dicom_root = _dicom_copy(synthetic_root, tmp_path / "dicom", photometric, window)
    predictor = StudyPredictor.load(ensemble, device="cpu")
    png = predictor.predict_frame(_valid(synthetic_root), root=synthetic_root)
    dcm_images = _valid(dicom_root)
    assert dcm_images[IMAGE_PATH].str.endswith(".dcm").all()
    sample = pydicom.dcmread(dicom_root / dcm_images[IMAGE_PATH].iloc[0])
    assert (sample.PhotometricInterpretation, sample.BitsAllocated, sample.BitsStored) == (photometric, 16, 12)
    dcm = predictor.predict_frame(dcm_images, root=dicom_root)
    merged = png.merge(dcm, on=STUDY_PATH, suffixes=("_png", "_dcm"), validate="one_to_one")
    assert len(merged) == len(png) == len(dcm) > 10
    difference = float(np.abs(merged["prob_png"] - merged["prob_dcm"]).max())
    print(f"{variant}: {len(merged)} studies, max |p_png - p_dcm| = {difference:.2e}")
    assert difference <= 0.01
    assert (merged["label_png"] == merged["label_dcm"]).all()


def test_cam_overlay_of_a_dicom_study_maps_onto_its_pixels(ensemble, synthetic_root, tmp_path):
    from muratune.cam.export import ImageSelection, export_cams

    dicom_root = _dicom_copy(synthetic_root, tmp_path / "dicom", "MONOCHROME1", True)
    study = _valid(synthetic_root)[STUDY_PATH].iloc[0]
    png_cams = export_cams(ensemble, tmp_path / "png", ImageSelection(study=synthetic_root / study), progress=False)
    dcm_cams = export_cams(ensemble, tmp_path / "dcm", ImageSelection(study=dicom_root / study), progress=False)
    assert len(dcm_cams.records) == len(png_cams.records) > 0
    for png_rec, dcm_rec in zip(png_cams.records, dcm_cams.records, strict=True):
        ds = pydicom.dcmread(dicom_root / study / Path(dcm_rec[IMAGE_PATH]).name)
        assert (dcm_rec["width"], dcm_rec["height"]) == (ds.Columns, ds.Rows)
        assert (dcm_rec["box"], dcm_rec["peak"]) == (png_rec["box"], png_rec["peak"])
        saved = json.loads((tmp_path / "dcm" / dcm_rec["json"]).read_text())
        assert (saved["width"], saved["height"]) == (ds.Columns, ds.Rows)


def test_serve_accepts_a_dicom_upload(ensemble, synthetic_root):
    from muratune.serve.service import StudyService, Upload

    images = _valid(synthetic_root)
    study = images[images[STUDY_PATH] == images[STUDY_PATH].iloc[0]]
    pngs = [synthetic_root / p for p in study[IMAGE_PATH]]
    service = StudyService(ensemble, device="cpu")
    from_png = service.analyse([Upload(p.name, p.read_bytes()) for p in pngs], "auto")
    uploads = [Upload(p.with_suffix(".dcm").name, encode_dicom(read_image(p), photometric="MONOCHROME1")) for p in pngs]
    from_dicom = service.analyse(uploads, "auto")
    assert from_dicom["prob"] == pytest.approx(from_png["prob"], abs=1e-6)
    assert [(v["width"], v["height"]) for v in from_dicom["views"]] == [
        (v["width"], v["height"]) for v in from_png["views"]
    ]
