"""StudyPredictor: a saved ensemble that turns radiograph files into study-level abnormality predictions."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import torch

from muratune.body_parts import body_part_in_path
from muratune.constants import BODY_PART, IMAGE_PATH, LABEL, PROB, STUDY_PATH, THRESHOLD
from muratune.data.cache import ImageCache
from muratune.data.images import ImageReadError, read_square
from muratune.ensemble.calibration import calibrate
from muratune.ensemble.select import Weights, combine
from muratune.ensemble.trained import TrainedModel, load_trained_model
from muratune.errors import UserError
from muratune.layout import ENSEMBLE_FILE
from muratune.schemas import CalibrationSpec, MemberEntry, read_ensemble_spec
from muratune.trainables import checkpoint as ckpt

DEFAULT_THRESHOLD = 0.5
N_VIEWS = "n_views"
N_UNREADABLE = "n_unreadable"

ErrorHandler = Callable[[str], None]


# ------------------------------------------------------------------------------------------------ paths
def study_path_of(image_path: str) -> str:
    """The study folder of an image, written as the dataset writes it: relative, with a trailing slash."""
    return str(PurePosixPath(image_path.replace("\\", "/")).parent) + "/"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _raise(message: str) -> None:
    raise ImageReadError(message)


def complete_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Add ``study_path`` and ``body_part`` (from the image path) to an image frame that lacks them."""
    out = frame.reset_index(drop=True).copy()
    if STUDY_PATH not in out:
        out[STUDY_PATH] = [study_path_of(p) for p in out[IMAGE_PATH]]
    if BODY_PART not in out:
        out[BODY_PART] = [body_part_in_path(p) for p in out[IMAGE_PATH]]
    return out


# ------------------------------------------------------------------------------------------------ images
class ImageSource:
    """Square uint8 images at one size and resize mode: from an ImageCache when it holds them, else from files."""

    def __init__(self, frame: pd.DataFrame, root: Path | None, size: int, mode: str, caches: Sequence[ImageCache]):
        self.paths = frame[IMAGE_PATH].astype(str).tolist()
        self.root, self.size, self.mode = root, size, mode
        cache = next((c for c in caches if c.size == size and c.meta.get("mode") == mode), None)
        self.cache = cache
        self.rows = cache.rows_for(self.paths) if cache is not None else np.full(len(self.paths), -1)

    def file(self, i: int) -> Path:
        """Where image ``i`` is read from when it is not cached."""
        return self.root / self.paths[i] if self.root is not None else Path(self.paths[i])

    def load(self, indices: np.ndarray, on_error: ErrorHandler) -> tuple[np.ndarray, np.ndarray]:
        """Squares of images ``indices`` and a mask of those that could be read (others reported and zero)."""
        out = np.zeros((len(indices), self.size, self.size), dtype=np.uint8)
        ok = np.ones(len(indices), dtype=bool)
        for k, i in enumerate(indices):
            if self.rows[i] >= 0 and self.cache is not None:
                out[k] = self.cache.images[self.rows[i]]
                continue
            try:
                out[k] = read_square(self.file(i), self.size, self.mode)[0]
            except ImageReadError as err:
                ok[k] = False
                on_error(str(err))
        return out, ok


def _member_probs(
    member: TrainedModel, squares: np.ndarray, batch_size: int, tta: bool, device: torch.device
) -> np.ndarray:
    """Probabilities of one member for uint8 squares, in batches; with TTA the mean over a horizontal flip."""
    outputs = []
    for start in range(0, len(squares), batch_size):
        batch = squares[start : start + batch_size]
        probs = member.predict(batch, device)
        if tta:
            probs = (probs + member.predict(np.ascontiguousarray(batch[..., ::-1]), device)) / 2
        outputs.append(probs)
    return np.concatenate(outputs) if outputs else np.zeros(0)


def member_image_probs(
    members: Sequence[TrainedModel],
    frame: pd.DataFrame,
    root: str | os.PathLike | None = None,
    caches: Sequence[ImageCache] = (),
    tta: bool = False,
    batch_size: int = 64,
    chunk: int = 512,
    progress: bool = False,
    on_error: ErrorHandler | None = None,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Image probabilities of every member (``n_images x n_members``; NaN rows for unreadable images).

    Members are grouped by input size and resize mode, so each image is read once per group and chunk.

    Args:
        members: the models.
        frame: one row per image with ``image_path`` (relative to ``root``, or absolute/cwd-relative).
        root: the folder image paths are relative to.
        caches: opened image caches to take images from when they hold them at a member's size.
        tta: average each member over the image and its horizontal flip.
        batch_size: images per forward pass.
        chunk: images read and kept in memory at once.
        progress: show a progress bar (tqdm, on stderr).
        on_error: called with the message of each unreadable image (default: raise ImageReadError).
        device: where the models run.
    """
    from tqdm.auto import tqdm

    on_error = _once_per_message(on_error or _raise)
    device = torch.device(device)
    groups: dict[tuple[int, str], list[int]] = {}
    for j, member in enumerate(members):
        groups.setdefault((member.image_size, str(member.data_config["resize_mode"])), []).append(j)
    base = Path(root) if root is not None else None
    sources = {key: ImageSource(frame, base, key[0], key[1], caches) for key in groups}
    out = np.full((len(frame), len(members)), np.nan)
    with tqdm(total=len(frame), desc="predicting", unit="img", disable=not progress or None) as bar:
        for start in range(0, len(frame), chunk):
            indices = np.arange(start, min(start + chunk, len(frame)))
            for key, member_ids in groups.items():
                squares, ok = sources[key].load(indices, on_error)
                for j in member_ids:
                    out[indices[ok], j] = _member_probs(members[j], squares[ok], batch_size, tta, device)
            bar.update(len(indices))
    return out


def _once_per_message(handler: ErrorHandler) -> ErrorHandler:
    """Wrap an error handler so that an image read again at another member size is reported once."""
    seen: set[str] = set()

    def report(message: str) -> None:
        if message not in seen:
            seen.add(message)
            handler(message)

    return report


# ------------------------------------------------------------------------------------------------ studies
def aggregate(
    images: pd.DataFrame,
    probs: np.ndarray,
    thresholds: dict[str, float],
    calibration: CalibrationSpec | None = None,
) -> pd.DataFrame:
    """Study predictions: mean of the readable views, calibrated, thresholded with the study's body-part threshold.

    ``thresholds`` are in the calibrated space (as ``ensemble.json`` stores them).

    Returns:
        One row per study (first-appearance order): ``study_path, body_part, prob, label, threshold, n_views,
        n_unreadable``; ``prob`` is NaN and ``label`` missing (<NA>) when no view could be read.
    """
    frame = pd.DataFrame(
        {STUDY_PATH: images[STUDY_PATH].to_numpy(), BODY_PART: images[BODY_PART].to_numpy(), PROB: probs}
    )
    grouped = frame.groupby(STUDY_PATH, sort=False, dropna=False)
    studies = grouped.agg(
        body_part=(BODY_PART, "first"), prob=(PROB, "mean"), n_views=(PROB, "count"), n_images=(PROB, "size")
    ).reset_index()
    studies[N_UNREADABLE] = studies.pop("n_images") - studies[N_VIEWS]
    studies[PROB] = calibrate(studies[PROB].to_numpy(dtype=float), list(studies[BODY_PART]), calibration)
    studies[THRESHOLD] = [thresholds.get(part, DEFAULT_THRESHOLD) for part in studies[BODY_PART]]
    label = (studies[PROB] >= studies[THRESHOLD]).astype("Int64")
    label[studies[PROB].isna()] = pd.NA
    studies.insert(3, LABEL, label)
    return studies


class StudyPredictor:
    """An ensemble of members with per-body-part weights and thresholds, predicting studies from image files."""

    def __init__(
        self,
        members: Sequence[TrainedModel],
        weights: Weights,
        thresholds: dict[str, float] | None = None,
        tta: bool = False,
        device: torch.device | str | None = None,
        calibration: CalibrationSpec | None = None,
    ) -> None:
        from muratune.trainables.models import select_device

        self.members = list(members)
        self.weights = {part: np.asarray(w, dtype=float) for part, w in weights.items()}
        self.thresholds = dict(thresholds or {})
        self.tta = tta
        self.calibration = calibration  # of the study probability; None: the identity
        self.device = torch.device(device) if device is not None else select_device()
        for member in self.members:
            member.model.to(self.device)

    @classmethod
    def load(cls, directory: str | os.PathLike, device: torch.device | str | None = None) -> StudyPredictor:
        """Load an ensemble folder written by ``muratune ensemble``.

        Raises:
            UserError: ``ensemble.json`` is missing or malformed, a member path leaves the folder, a checksum or
                tensor shape does not match, or weights cannot be read.
        """
        directory = Path(directory)
        source = directory / ENSEMBLE_FILE
        spec = read_ensemble_spec(source)
        members = [_load_ensemble_member(directory, entry, source) for entry in spec.members]
        weights = {part: np.asarray(vector, dtype=float) for part, vector in spec.weights.items()}
        thresholds = {part: float(value) for part, value in spec.thresholds.items()}
        return cls(members, weights, thresholds, tta=spec.tta, device=device, calibration=spec.calibration)

    def threshold(self, body_part: str | None) -> float:
        """Decision threshold for a body part (0.5 when none was tuned)."""
        return self.thresholds.get(body_part or "", DEFAULT_THRESHOLD)

    def image_probs(
        self,
        frame: pd.DataFrame,
        root: str | os.PathLike | None = None,
        caches: Sequence[ImageCache] = (),
        batch_size: int = 64,
        progress: bool = False,
        on_error: ErrorHandler | None = None,
    ) -> np.ndarray:
        """Ensemble probability of each image of ``frame`` (which needs ``image_path`` and ``body_part``)."""
        probs = member_image_probs(
            self.members,
            frame,
            root,
            caches,
            self.tta,
            batch_size,
            progress=progress,
            on_error=on_error,
            device=self.device,
        )
        return combine(probs, list(frame[BODY_PART]), self.weights)

    def predict_frame(
        self,
        frame: pd.DataFrame,
        root: str | os.PathLike | None = None,
        caches: Sequence[ImageCache] = (),
        batch_size: int = 64,
        progress: bool = False,
        on_error: ErrorHandler | None = None,
    ) -> pd.DataFrame:
        """Predict many studies at once.

        Args:
            frame: one row per image with ``image_path``; ``study_path`` and ``body_part`` are inferred from the
                path when missing.
            root: folder the image paths are relative to.
            caches: image caches to read from when they hold the images at a member's size.
            batch_size: images per forward pass.
            progress: show a progress bar.
            on_error: called with the message of each unreadable image; default: raise ``ImageReadError``.

        Returns:
            See ``aggregate``: one row per study with ``prob``, ``label`` (0/1) and ``threshold``.
        """
        images = complete_frame(frame)
        probs = self.image_probs(images, root, caches, batch_size, progress, on_error)
        return aggregate(images, probs, self.thresholds, self.calibration)

    def predict_study(self, image_paths: Sequence[str | os.PathLike], body_part: str | None = None) -> dict:
        """Predict one study from its view files.

        Returns:
            ``prob`` (the calibrated mean of the view probabilities), ``label`` (0/1), ``threshold``, ``body_part``
            (given or inferred from the path) and ``view_probs`` (one per file, uncalibrated).

        Raises:
            ImageReadError: a file cannot be read.
        """
        paths = [str(p) for p in image_paths]
        if not paths:
            raise UserError("predict_study: no image paths given")
        part = body_part or body_part_in_path(paths[0])
        frame = pd.DataFrame({IMAGE_PATH: paths, STUDY_PATH: "study", BODY_PART: part})
        view_probs = self.image_probs(frame)
        prob = float(calibrate(np.array([np.mean(view_probs)]), [part], self.calibration)[0])
        threshold = self.threshold(part)
        return {
            "prob": prob,
            "label": int(prob >= threshold),
            "threshold": threshold,
            "body_part": part,
            "view_probs": [float(p) for p in view_probs],
        }


# ------------------------------------------------------------------------------------------------ loading
def _member_dir(directory: Path, relative: str, source: Path) -> Path:
    """Resolve a member folder, refusing absolute paths and paths that leave the ensemble folder."""
    candidate = Path(relative)
    target = (directory / candidate).resolve()
    if candidate.is_absolute() or not target.is_relative_to(directory.resolve()):
        raise UserError(f"{source}: member path {relative!r} leaves the ensemble folder; refusing to load it")
    return target


def _load_ensemble_member(directory: Path, entry: MemberEntry, source: Path) -> TrainedModel:
    folder = _member_dir(directory, entry.path, source)
    weights_file = folder / ckpt.MODEL_FILE
    if not weights_file.is_file():
        raise UserError(f"{weights_file}: member weights not found (listed in {source})")
    if entry.sha256 and file_sha256(weights_file) != entry.sha256:
        raise UserError(f"{weights_file}: checksum does not match {source}; the weights are corrupted or replaced")
    return load_trained_model(folder, name=entry.name)
