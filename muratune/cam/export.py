"""`muratune cam`: ensemble heatmaps as PNG overlays, JSON boxes, an offline index.html and a localisation score."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import pandas as pd

from muratune.cam.boxes import DEFAULT_THRESHOLD, Box, Localisation, localise
from muratune.cam.cam import AUTO, DEFAULT_SHIFTS, EnsembleCam
from muratune.cam.overlay import overlay
from muratune.cam.pages import render_index
from muratune.cam.score import Prediction, localisation_score, read_boxes
from muratune.constants import BODY_PART, IMAGE_PATH, STUDY_PATH
from muratune.data.image_list import default_root, read_image_list
from muratune.data.images import ImageReadError, read_image
from muratune.ensemble.calibration import calibrate
from muratune.ensemble.load import load_ensemble
from muratune.ensemble.predictor import complete_frame
from muratune.errors import UserError
from muratune.fileio import Input, atomic_dir, check_output, json_safe, refuse_existing
from muratune.layout import CAM_IMAGES_DIR, CAM_INDEX_HTML, CAM_SCORE_JSON, CAMS_JSON, CAMS_KIND
from muratune.lock import lock_experiment_holding
from muratune.schemas import CalibrationSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")
_POSITIVE_RE = re.compile(r"study\d+_positive$")
_UNSAFE_RE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class ImageSelection:
    """Which images to explain: a study folder or an image list, the folder their paths are under, a label filter."""

    study: str | os.PathLike | None = None
    csv: str | os.PathLike | None = None
    root: str | os.PathLike | None = None
    abnormal_only: bool = False

    @property
    def source(self) -> str:
        """The study folder or image list, for messages."""
        return str(self.study or self.csv)


@dataclass(frozen=True)
class CamOptions:
    """How maps are made and read.

    Attributes:
        layer: ``auto``, a timm feature-stage index or a module name (see ``resolve_layer``).
        method: ``auto``, ``cam``, ``gradcam``, ``gradcam++``, ``layercam`` or ``hirescam``.
        shifts: average each map over ``shifts x shifts`` input translations of a fraction of a map cell.
        threshold: the box covers the largest component above this fraction of the map's maximum.
        batch_size: images per forward pass.
        device: ``cpu``/``cuda``; default: CUDA when available.
    """

    layer: str | int = AUTO
    method: str = AUTO
    shifts: int = DEFAULT_SHIFTS
    threshold: float = DEFAULT_THRESHOLD
    batch_size: int = 16
    device: str | None = None


@dataclass
class ExportSummary:
    """What ``export_cams`` wrote: folder, image counts, the CAM layer per member and the score (if asked)."""

    out: Path
    n_images: int
    n_unreadable: int
    layers: dict[str, str]
    score: dict | None = None
    records: list[dict] = field(default_factory=list, repr=False)

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        layers = ", ".join(f"{name}: {spec}" for name, spec in self.layers.items())
        lines = [f"wrote {self.n_images} CAMs to {self.out} ({self.n_unreadable} unreadable); {layers}"]
        if self.score is not None and not self.score["n_images"]:
            lines.append("localisation: none of the exported images has a true box")
        elif self.score is not None:
            s = self.score
            lines.append(
                f"localisation on {s['n_images']} images with boxes: pointing game {s['pointing_game']:.3f}, "
                f"mean IoU {s['mean_iou']:.3f}, chance {s['chance']:.3f}"
            )
        return lines


# ------------------------------------------------------------------------------------------------ inputs
def select_images(selection: ImageSelection) -> tuple[pd.DataFrame, Path | None]:
    """The images to explain (``image_path``, ``study_path``, ``body_part``) and the folder their paths are under.

    A study folder gives its PNG/JPEG/DICOM files; an image list its rows (paths relative to ``root``, by default
    the list's parent's parent). ``abnormal_only`` keeps the studies labelled abnormal (``studyN_positive`` folders).

    Raises:
        UserError: neither or both of ``study`` and ``csv`` given, a missing study folder, or no image left.
    """
    study, csv, root = selection.study, selection.csv, selection.root
    if (study is None) == (csv is None):
        raise UserError("give exactly one of --study PATH or --csv IMAGE_PATHS_CSV")
    if study is not None:
        folder = Path(study)
        files = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        if not files:
            raise UserError(f"{folder}: not a study folder with PNG, JPEG or DICOM images")
        base = Path(root) if root is not None else None
        paths = [_relative(p, base) for p in files]
        frame = pd.DataFrame({IMAGE_PATH: paths})
    else:
        frame = read_image_list(Path(str(csv)))
        base = Path(root) if root is not None else default_root(Path(str(csv)), frame[IMAGE_PATH].iloc[0])
    frame = complete_frame(frame)
    if selection.abnormal_only:
        keep = [bool(_POSITIVE_RE.search(str(PurePosixPath(s)).rstrip("/"))) for s in frame[STUDY_PATH]]
        frame = frame[keep].reset_index(drop=True)
        if frame.empty:
            raise UserError(f"{study or csv}: no study labelled abnormal (studyN_positive) among the images")
    return frame, base


def _relative(path: Path, base: Path | None) -> str:
    """``path`` relative to ``base`` when it lies inside it, else as given (posix slashes)."""
    if base is not None:
        try:
            return path.resolve().relative_to(base.resolve()).as_posix()
        except (ValueError, RuntimeError, OSError):  # outside base, or a symlink loop: read (and reported) as given
            pass
    return path.as_posix()


# ------------------------------------------------------------------------------------------------ output
def cam_inputs(
    ensemble: str | os.PathLike,
    selection: ImageSelection,
    frame: pd.DataFrame | None = None,
    base: Path | None = None,
) -> list[Input]:
    """What `muratune cam` reads, which its output may not touch: the ensemble, the study or the image list, the
    dataset folders its images lie in (given ``frame`` and ``base`` from `select_images`), and their root.

    Without ``--root`` a list's own folder is the dataset (``MURA-v1.1/valid_image_paths.csv``); with it, the list
    may be a hand-made file anywhere, and only the folders of its images count."""
    inputs = [Input(ensemble, "the ensemble")]
    if selection.study is not None:
        inputs.append(Input(selection.study, "the study"))
    if selection.csv is not None:
        inputs.append(Input(selection.csv, "the image list"))
        if selection.root is None:
            inputs.append(Input(Path(selection.csv).resolve().parent, "the dataset"))
        if frame is not None:
            inputs += [Input(folder, "the dataset") for folder in listed_image_folders(frame, base)]
    if selection.root is not None:  # the folder above the dataset: outputs may sit beside it, never over it
        inputs.append(Input(selection.root, "the image root", holds_outputs=True))
    return inputs


def listed_image_folders(frame: pd.DataFrame, base: Path | None) -> list[Path]:
    """The folders a list's images lie in: the top folder under ``base`` (``ROOT/MURA-v1.1``) of each relative
    path, the parent folder of the others."""
    folders = set()
    for image in frame[IMAGE_PATH]:
        parts = PurePosixPath(str(image)).parts
        if base is not None and len(parts) > 1 and parts[0] not in ("/", ".", ".."):
            folders.add(base / parts[0])
        else:
            folders.add((base / str(image) if base is not None else Path(str(image))).parent)
    return sorted(folders)


def image_slug(image_path: str, taken: set[str]) -> str:
    """A unique, file-system-safe name for an image: its last path parts joined by ``_`` (no extension)."""
    parts = list(PurePosixPath(image_path.replace("\\", "/")).with_suffix("").parts[-5:])
    slug = _UNSAFE_RE.sub("-", "_".join(p for p in parts if p not in ("/", "..", "."))).strip("-_.") or "image"
    candidate, n = slug, 1
    while candidate in taken:
        n += 1
        candidate = f"{slug}-{n}"
    taken.add(candidate)
    return candidate


def study_rows(
    records: Sequence[dict], thresholds: dict[str, float], calibration: CalibrationSpec | None = None
) -> list[dict]:
    """Group image records by study (first-appearance order) with the study probability and 0/1 label.

    The study probability is the mean of the image probabilities, calibrated as the ensemble calibrates it (its
    thresholds are in the calibrated space).
    """
    studies: dict[str, dict] = {}
    for rec in records:
        study = studies.setdefault(
            rec[STUDY_PATH], {STUDY_PATH: rec[STUDY_PATH], BODY_PART: rec[BODY_PART], "images": []}
        )
        study["images"].append(rec)
    for study in studies.values():
        mean = np.array([np.mean([r["probability"] for r in study["images"]])])
        prob = float(calibrate(mean, [study[BODY_PART]], calibration)[0])
        threshold = thresholds.get(study[BODY_PART] or "", 0.5)
        study.update(probability=prob, threshold=threshold, label=int(prob >= threshold))
    return list(studies.values())


def _record(row: pd.Series, image: np.ndarray, prob: float, loc: Localisation, slug: str, threshold: float) -> dict:
    """The JSON record of one image."""
    height, width = image.shape[:2]
    return {
        IMAGE_PATH: str(row[IMAGE_PATH]),
        STUDY_PATH: str(row[STUDY_PATH]),
        BODY_PART: row[BODY_PART],
        "view": PurePosixPath(str(row[IMAGE_PATH]).replace("\\", "/")).stem,
        "probability": prob,
        "width": width,
        "height": height,
        **loc.to_dict(),
        "box_threshold": threshold,
        "png": f"{CAM_IMAGES_DIR}/{slug}.png",
        "json": f"{CAM_IMAGES_DIR}/{slug}.json",
    }


def _predictions(records: Sequence[dict]) -> list[Prediction]:
    """Score inputs from exported records."""
    out = []
    for rec in records:
        box = Box(**rec["box"]) if rec["box"] else None
        out.append(Prediction(rec[IMAGE_PATH], (rec["peak"]["x"], rec["peak"]["y"]), box, rec["width"], rec["height"]))
    return out


def export_cams(
    ensemble: str | os.PathLike,
    out: str | os.PathLike,
    selection: ImageSelection,
    options: CamOptions | None = None,
    score_boxes: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
    warn: Callable[[str], None] = print,
) -> ExportSummary:
    """Export ensemble CAMs for a study or an image list into ``out`` (built in a temp folder, then renamed).

    Writes ``images/<name>.png`` (overlay with box, peak and caption) and ``images/<name>.json`` per image,
    ``cams.json`` (all records), ``index.html``, and with ``score_boxes`` a ``score.json`` (see
    ``localisation_score``).

    Args:
        ensemble: an ensemble folder (``ensemble.json``) or a single checkpoint folder.
        out: the folder to write; refused if it exists unless ``overwrite``.
        selection: the images to explain.
        options: map method, layer, shifts, box threshold, batch size and device.
        score_boxes: a ``boxes.csv`` of true findings to score peaks and boxes against.
        overwrite: replace an existing ``out``.
        progress: show a progress bar (tqdm, stderr).
        warn: receives one line per unreadable image.

    Raises:
        UserError: bad inputs, an existing ``out`` without ``overwrite``, or no readable image.
    """
    options = options or CamOptions()
    if not 0 < options.threshold < 1:
        raise UserError(f"--threshold {options.threshold}: must be between 0 and 1 (a fraction of the map's maximum)")
    frame, base = select_images(selection)
    check_output(out, cam_inputs(ensemble, selection, frame, base))
    refuse_existing(out, overwrite, kind=CAMS_KIND)
    truth = read_boxes(score_boxes) if score_boxes is not None else None
    predictor = load_ensemble(ensemble, options.device)
    explainer = EnsembleCam.from_predictor(predictor, options.layer, options.method, options.shifts)
    with lock_experiment_holding(out, "cam"), atomic_dir(out, overwrite, kind=CAMS_KIND) as tmp:
        records, unreadable = write_overlays(tmp, frame, base, explainer, options, progress, warn)
        if not records:
            raise UserError(f"{selection.source}: none of the {len(frame)} images could be read")
        layers = explainer.describe()
        details = f"ensemble {Path(ensemble).name}; maps: " + ", ".join(f"{k}: {v}" for k, v in layers.items())
        details += f"; box = largest region above {options.threshold:g} x max; probabilities are per image"
        page = render_index(study_rows(records, predictor.thresholds, predictor.calibration), "muratune CAMs", details)
        (tmp / CAM_INDEX_HTML).write_text(page, encoding="utf-8")
        _write_json(tmp / CAMS_JSON, {"layers": layers, "images": records})
        score = None
        if truth is not None:
            score = json_safe(localisation_score(_predictions(records), truth))
            score.update(boxes=str(score_boxes), layers=layers)
            _write_json(tmp / CAM_SCORE_JSON, score)
    return ExportSummary(Path(out), len(records), unreadable, layers, score, records)


def write_overlays(
    folder: Path,
    frame: pd.DataFrame,
    base: Path | None,
    explainer: EnsembleCam,
    options: CamOptions,
    progress: bool,
    warn: Callable[[str], None],
) -> tuple[list[dict], int]:
    """Explain every image of ``frame`` in batches, writing its overlay PNG and JSON; return records and unreadable."""
    from tqdm.auto import tqdm

    (folder / CAM_IMAGES_DIR).mkdir()
    records: list[dict] = []
    unreadable = 0
    taken: set[str] = set()
    with tqdm(total=len(frame), desc="cam", unit="img", disable=not progress or None) as bar:
        for start in range(0, len(frame), options.batch_size):
            rows = frame.iloc[start : start + options.batch_size]
            images, kept = [], []
            for _, row in rows.iterrows():
                path = base / row[IMAGE_PATH] if base is not None else Path(row[IMAGE_PATH])
                try:
                    images.append(read_image(path))
                    kept.append(row)
                except ImageReadError as err:
                    unreadable += 1
                    warn(f"unreadable image: {err}")
            results = explainer(images, [r[BODY_PART] for r in kept]) if images else []
            for row, image, result in zip(kept, images, results, strict=True):
                loc = localise(result.heatmap, options.threshold)
                slug = image_slug(str(row[IMAGE_PATH]), taken)
                rec = _record(row, image, result.prob, loc, slug, options.threshold)
                caption = f"{rec[BODY_PART] or '?'} {rec['view']}  p={result.prob:.2f}"
                cv2.imwrite(str(folder / rec["png"]), overlay(image, result.heatmap, loc, caption))
                _write_json(folder / rec["json"], rec)
                records.append(rec)
            bar.update(len(rows))
    return records, unreadable


def _write_json(path: Path, obj: dict) -> None:
    """Write JSON into the export's temporary folder (the folder as a whole is moved into place atomically)."""
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
