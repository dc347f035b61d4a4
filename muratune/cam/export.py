"""`muratune cam`: ensemble heatmaps as PNG overlays, JSON boxes, an offline index.html and a localisation score."""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import quote

import cv2
import numpy as np
import pandas as pd

from muratune.cam.boxes import DEFAULT_THRESHOLD, Box, Localisation, localise
from muratune.cam.cam import AUTO, DEFAULT_SHIFTS, EnsembleCam
from muratune.cam.score import Prediction, localisation_score, read_boxes
from muratune.constants import BODY_PART, IMAGE_PATH, STUDY_PATH
from muratune.data.images import ImageReadError, read_image
from muratune.ensemble.members import load_member
from muratune.ensemble.predictor import ENSEMBLE_FILE, StudyPredictor
from muratune.ensemble.select import GLOBAL
from muratune.errors import UserError
from muratune.fileio import atomic_dir, refuse_existing
from muratune.trainables import checkpoint as ckpt

IMAGES_DIR = "images"
INDEX_FILE = "index.html"
CAMS_FILE = "cams.json"
SCORE_FILE = "score.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")
_POSITIVE_RE = re.compile(r"study\d+_positive$")
_UNSAFE_RE = re.compile(r"[^A-Za-z0-9_.-]+")


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
def load_ensemble(path: str | os.PathLike, device: str | None = None) -> StudyPredictor:
    """An ensemble folder, or one checkpoint folder as a one-member ensemble (thresholds 0.5, no TTA).

    Raises:
        UserError: the folder holds neither ``ensemble.json`` nor ``trial.json`` + ``model.safetensors``.
    """
    path = Path(path)
    if (path / ENSEMBLE_FILE).is_file():
        return StudyPredictor.load(path, device=device)
    if (path / ckpt.TRIAL_FILE).is_file() and (path / ckpt.MODEL_FILE).is_file():
        return StudyPredictor([load_member(path)], {GLOBAL: np.ones(1)}, device=device)
    raise UserError(
        f"{path}: not an ensemble folder ({ENSEMBLE_FILE}) nor a checkpoint ({ckpt.TRIAL_FILE} + {ckpt.MODEL_FILE}); "
        "build one with `muratune ensemble EXPERIMENT`"
    )


def select_images(
    study: str | os.PathLike | None = None,
    csv: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
    abnormal_only: bool = False,
) -> tuple[pd.DataFrame, Path | None]:
    """The images to explain (``image_path``, ``study_path``, ``body_part``) and the folder their paths are under.

    Args:
        study: a study folder; its PNG/JPEG/DICOM files are taken.
        csv: an image list (``valid_image_paths.csv`` style).
        root: the folder image paths are relative to (default for ``csv``: its parent's parent).
        abnormal_only: keep studies labelled abnormal only (MURA folder names ``studyN_positive``).

    Raises:
        UserError: neither or both of ``study`` and ``csv`` given, a missing study folder, or no image left.
    """
    from muratune.ensemble.predict import default_root, read_image_list
    from muratune.ensemble.predictor import complete_frame

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
    if abnormal_only:
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
        except ValueError:
            pass
    return path.as_posix()


# ------------------------------------------------------------------------------------------------ drawing
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


# ------------------------------------------------------------------------------------------------ output
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


def study_rows(records: Sequence[dict], thresholds: dict[str, float]) -> list[dict]:
    """Group image records by study (first-appearance order) with the study probability and 0/1 label."""
    studies: dict[str, dict] = {}
    for rec in records:
        study = studies.setdefault(
            rec[STUDY_PATH], {STUDY_PATH: rec[STUDY_PATH], BODY_PART: rec[BODY_PART], "images": []}
        )
        study["images"].append(rec)
    for study in studies.values():
        prob = float(np.mean([r["probability"] for r in study["images"]]))
        threshold = thresholds.get(study[BODY_PART] or "", 0.5)
        study.update(probability=prob, threshold=threshold, label=int(prob >= threshold))
    return list(studies.values())


def render_index(studies: Sequence[dict], title: str, details: str) -> str:
    """An offline HTML page of thumbnails grouped by study (relative links only, every string escaped)."""
    esc = html.escape
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1em;background:#fafafa}"
        "section{margin-bottom:1.5em;border-bottom:1px solid #ccc}"
        "figure{display:inline-block;margin:0 .5em .5em 0;vertical-align:top}"
        "img{width:220px;height:auto;border:1px solid #888}figcaption{font-size:.8em}"
        ".abnormal{color:#b00}.normal{color:#060}</style>",
        "</head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p>{esc(details)}</p>",
    ]
    for study in studies:
        verdict = "abnormal" if study["label"] else "normal"
        parts.append("<section>")
        parts.append(
            f"<h2>{esc(str(study[STUDY_PATH]))}</h2><p>{esc(str(study[BODY_PART]))} &middot; study probability "
            f'{study["probability"]:.3f} &middot; <span class="{verdict}">{verdict}</span> '
            f"(threshold {study['threshold']:.2f})</p>"
        )
        for rec in study["images"]:
            png, meta = esc(quote(rec["png"]), quote=True), esc(quote(rec["json"]), quote=True)
            name = esc(str(rec["view"]))
            parts.append(
                f'<figure><a href="{png}"><img src="{png}" alt="{name}" loading="lazy"></a>'
                f'<figcaption>{name} &middot; p={rec["probability"]:.3f} &middot; <a href="{meta}">json</a>'
                "</figcaption></figure>"
            )
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


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
        "png": f"{IMAGES_DIR}/{slug}.png",
        "json": f"{IMAGES_DIR}/{slug}.json",
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
    study: str | os.PathLike | None = None,
    csv: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
    abnormal_only: bool = False,
    overwrite: bool = False,
    layer: str | int = AUTO,
    method: str = AUTO,
    shifts: int = DEFAULT_SHIFTS,
    threshold: float = DEFAULT_THRESHOLD,
    score_boxes: str | os.PathLike | None = None,
    batch_size: int = 16,
    device: str | None = None,
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
        study: a study folder to explain (or give ``csv``).
        csv: an image list to explain (or give ``study``).
        root: the folder image paths are relative to.
        abnormal_only: explain the studies labelled abnormal only.
        overwrite: replace an existing ``out``.
        layer: CAM layer: ``auto``, a timm feature-stage index or a module name (see ``resolve_layer``).
        method: ``auto``, ``cam``, ``gradcam``, ``gradcam++``, ``layercam`` or ``hirescam``.
        shifts: average each map over ``shifts x shifts`` input translations of a fraction of a map cell.
        threshold: the box covers the largest component above this fraction of the map's maximum.
        score_boxes: a ``boxes.csv`` of true findings to score peaks and boxes against.
        batch_size: images per forward pass.
        device: ``cpu``/``cuda``; default: CUDA when available.
        progress: show a progress bar (tqdm, stderr).
        warn: receives one line per unreadable image.

    Raises:
        UserError: bad inputs, an existing ``out`` without ``overwrite``, or no readable image.
    """
    from tqdm.auto import tqdm

    if not 0 < threshold < 1:
        raise UserError(f"--threshold {threshold}: must be between 0 and 1 (a fraction of the map's maximum)")
    refuse_existing(out, overwrite)
    truth = read_boxes(score_boxes) if score_boxes is not None else None
    frame, base = select_images(study, csv, root, abnormal_only)
    predictor = load_ensemble(ensemble, device)
    explainer = EnsembleCam.from_predictor(predictor, layer, method, shifts)
    records: list[dict] = []
    unreadable = 0
    taken: set[str] = set()
    with atomic_dir(out, overwrite) as tmp:
        (tmp / IMAGES_DIR).mkdir()
        with tqdm(total=len(frame), desc="cam", unit="img", disable=not progress or None) as bar:
            for start in range(0, len(frame), batch_size):
                rows = frame.iloc[start : start + batch_size]
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
                    loc = localise(result.heatmap, threshold)
                    rec = _record(row, image, result.prob, loc, image_slug(str(row[IMAGE_PATH]), taken), threshold)
                    caption = f"{rec[BODY_PART] or '?'} {rec['view']}  p={result.prob:.2f}"
                    cv2.imwrite(str(tmp / rec["png"]), overlay(image, result.heatmap, loc, caption))
                    (tmp / rec["json"]).write_text(json.dumps(rec, indent=2) + "\n", encoding="utf-8")
                    records.append(rec)
                bar.update(len(rows))
        if not records:
            raise UserError(f"{study or csv}: none of the {len(frame)} images could be read")
        layers = explainer.describe()
        details = f"ensemble {Path(ensemble).name}; maps: " + ", ".join(f"{k}: {v}" for k, v in layers.items())
        details += f"; box = largest region above {threshold:g} x max; probabilities are per image"
        page = render_index(study_rows(records, predictor.thresholds), "muratune CAMs", details)
        (tmp / INDEX_FILE).write_text(page, encoding="utf-8")
        (tmp / CAMS_FILE).write_text(json.dumps({"layers": layers, "images": records}, indent=2) + "\n", "utf-8")
        score = None
        if truth is not None:
            metrics = localisation_score(_predictions(records), truth)
            metrics = {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in metrics.items()}
            score = {**metrics, "boxes": str(score_boxes), "layers": layers}
            (tmp / SCORE_FILE).write_text(json.dumps(score, indent=2) + "\n", encoding="utf-8")
    return ExportSummary(Path(out), len(records), unreadable, layers, score, records)
