"""`muratune data synth`: draw every planned image (in parallel) and write the MURA layout with boxes.csv."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from muratune.constants import SPLIT_TRAIN, SPLIT_VALID
from muratune.data.synth.draw import render_image
from muratune.data.synth.geometry import _SCRATCH
from muratune.data.synth.plan import (
    BOXES_CSV,
    BOXES_HEADER,
    IMAGE_FORMATS,
    ROOT_NAME,
    ImageSpec,
    StudySpec,
    SynthSummary,
    parse_difficulty,
    plan_dataset,
)
from muratune.errors import UserError
from muratune.fileio import atomic_dir, check_output
from muratune.layout import DATASET_KIND

# PNG encoding: the Average filter alone (libpng otherwise tries all five per row) and, for grayscale, Huffman-only
# deflate (docs/performance.md has the measurement). Three-channel images keep LZ77, which finds repeated gray bytes.
# cv2 before 4.11 has no filter flag and keeps its default filters.
_PNG_FILTER = [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_AVG] if hasattr(cv2, "IMWRITE_PNG_FILTER") else []
PNG_PARAMS_GRAY = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY]
PNG_PARAMS_GRAY += _PNG_FILTER
PNG_PARAMS_RGB = [cv2.IMWRITE_PNG_COMPRESSION, 1, *_PNG_FILTER]


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs to draw and write one image."""

    spec: ImageSpec
    seed: int
    strength: float
    long_side: int
    root: str  # the (temporary) MURA-v1.1 folder


def draw_image(
    spec: ImageSpec, seed: int, strength: float, long_side: int
) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Draw the image of ``spec`` (grayscale, or gray repeated over 3 channels) and return it with its boxes."""
    image, boxes = render_image(spec.body_part, spec.finding, (seed, spec.index), strength, long_side)
    return (cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if spec.rgb else image), boxes


def encode_png(image: np.ndarray) -> bytes:
    """Encode a grayscale or 3-channel uint8 image as PNG, with the settings fastest for these images."""
    ok, png = cv2.imencode(".png", image, PNG_PARAMS_GRAY if image.ndim == 2 else PNG_PARAMS_RGB)
    if not ok:  # pragma: no cover - cv2 failure
        raise RuntimeError(f"cannot encode a {image.shape} image as PNG")
    return png.tobytes()


def encode_synthetic_dicom(image: np.ndarray, spec: ImageSpec, seed: int) -> bytes:
    """Encode a drawn image as MONOCHROME2 DICOM (12 of 16 bits, windowed), with UIDs fixed by seed and path."""
    from pydicom.uid import generate_uid

    from muratune.data.dicom import encode_dicom

    study_path = spec.image_path.rsplit("/", 1)[0]
    return encode_dicom(
        image if image.ndim == 2 else image[..., 0],  # the RGB views are gray repeated over 3 channels
        study_uid=generate_uid(entropy_srcs=[str(seed), study_path]),
        instance_uid=generate_uid(entropy_srcs=[str(seed), spec.image_path]),
        patient_id=study_path.split("/")[3].removeprefix("patient"),
        body_part=spec.body_part.removeprefix("XR_"),
    )


def _run_job(job: _Job) -> list[str]:
    """Draw one image, write it (PNG or DICOM) into its study folder (made beforehand), return its boxes.csv rows."""
    spec = job.spec
    image, boxes = draw_image(spec, job.seed, job.strength, job.long_side)
    data = encode_synthetic_dicom(image, spec, job.seed) if spec.image_path.endswith(".dcm") else encode_png(image)
    (Path(job.root) / spec.image_path.removeprefix(f"{ROOT_NAME}/")).write_bytes(data)
    return [f"{spec.image_path},{x0},{y0},{x1},{y1},{spec.finding}" for x0, y0, x1, y1 in boxes]


def _run_jobs(jobs: list[_Job], workers: int) -> Iterator[list[str]]:
    """Run the jobs in order, in-process for one worker or in a process pool otherwise."""
    if workers <= 1:
        yield from map(_run_job, jobs)
        _SCRATCH.buffers.clear()  # pool workers free theirs on exit
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_run_job, jobs, chunksize=max(1, min(32, len(jobs) // (workers * 8))))


def _write_csvs(root: Path, plan: list[StudySpec], box_rows: list[str]) -> None:
    for split in (SPLIT_TRAIN, SPLIT_VALID):
        studies = [s for s in plan if s.split == split]
        images = "".join(f"{im.image_path}\n" for s in studies for im in s.images)
        labels = "".join(f"{s.study_path},{s.label}\n" for s in studies)
        (root / f"{split}_image_paths.csv").write_text(images, encoding="utf-8")
        (root / f"{split}_labeled_studies.csv").write_text(labels, encoding="utf-8")
    (root / BOXES_CSV).write_text("\n".join([BOXES_HEADER, *box_rows]) + "\n", encoding="utf-8")


def _check_arguments(studies: int, long_side: int, valid_share: float, workers: int, image_format: str) -> None:
    """Refuse arguments `generate_dataset` cannot honour, naming the option."""
    if studies < 1:
        raise UserError(f"--studies {studies}: need at least 1 study")
    if not 32 <= long_side <= 8192:
        raise UserError(f"--size {long_side}: choose an image size between 32 and 8192 pixels")
    if not 0.0 <= valid_share < 1.0:
        raise UserError(f"--valid-share {valid_share}: must be in [0, 1)")
    if workers < 0:
        raise UserError(f"--workers {workers}: must be 0 (all cores) or more")
    if image_format not in IMAGE_FORMATS:
        raise UserError(f"--format {image_format!r}: choose one of {', '.join(IMAGE_FORMATS)}")


def generate_dataset(
    out: str | os.PathLike,
    studies: int = 600,
    seed: int = 0,
    difficulty: str | float = "medium",
    long_side: int = 512,
    workers: int = 0,
    overwrite: bool = False,
    valid_share: float = 0.1,
    image_format: str = "png",
) -> SynthSummary:
    """Write a synthetic dataset in the MURA v1.1 layout to ``out/MURA-v1.1``, with ``boxes.csv`` for its findings.

    The same arguments give byte-identical files, whatever the number of workers.

    Args:
        out: folder to hold ``MURA-v1.1/``.
        studies: number of studies over both splits.
        seed: random seed.
        difficulty: ``easy``, ``medium``, ``hard`` or a number in (0, 1] (1 = easiest).
        long_side: approximate long side of the images in pixels (each image varies by up to 15%).
        workers: processes used to draw images; 0 means all cores, 1 draws in this process.
        overwrite: replace an existing ``out/MURA-v1.1``.
        valid_share: share of the studies in the ``valid`` split.
        image_format: ``png`` (default) or ``dicom`` (MONOCHROME2, 12 bits stored in 16, with a window centre and
            width; the same pixels as the PNGs of the same seed).

    Returns:
        A summary whose ``str`` is a short human report.

    Raises:
        UserError: bad arguments, or ``out/MURA-v1.1`` exists and ``overwrite`` is not set.
    """
    strength = parse_difficulty(difficulty)
    _check_arguments(studies, long_side, valid_share, workers, image_format)
    workers = workers or os.cpu_count() or 1
    start = time.perf_counter()
    target = Path(out) / ROOT_NAME
    plan = plan_dataset(studies, seed, strength, valid_share, image_format)
    check_output(out, flag="OUT")
    with atomic_dir(target, overwrite=overwrite, kind=DATASET_KIND) as tmp:
        for study in plan:  # once per study here rather than once per image in the workers
            (tmp / study.study_path.removeprefix(f"{ROOT_NAME}/")).mkdir(parents=True, exist_ok=True)
        jobs = [_Job(im, seed, strength, long_side, str(tmp)) for s in plan for im in s.images]
        box_rows: list[str] = []
        for rows in tqdm(_run_jobs(jobs, workers), total=len(jobs), desc="drawing", unit="img", disable=None):
            box_rows.extend(rows)
        _write_csvs(tmp, plan, box_rows)
    summary = SynthSummary(root=target, seed=seed, strength=strength, boxes=len(box_rows))
    for split in (SPLIT_TRAIN, SPLIT_VALID):
        chosen = [s for s in plan if s.split == split]
        summary.studies[split] = len(chosen)
        summary.abnormal[split] = sum(s.label for s in chosen)
        summary.images[split] = sum(len(s.images) for s in chosen)
    summary.seconds = time.perf_counter() - start
    return summary
