"""The synthetic dataset's plan: studies, patients, views and findings per split and body part, before drawing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from muratune.constants import BODY_PARTS, SPLIT_TRAIN, SPLIT_VALID
from muratune.errors import UserError
from muratune.layout import BOXES_CSV

ROOT_NAME = "MURA-v1.1"
IMAGE_FORMATS = {"png": ".png", "dicom": ".dcm"}  # --format -> suffix
BOXES_HEADER = "image_path,x0,y0,x1,y1,kind"
FINDING_KINDS: tuple[str, ...] = ("fracture", "hardware", "lesion")
# Named difficulties as finding strengths (1 = easiest, largest and most contrasted findings).
DIFFICULTIES: dict[str, float] = {"easy": 1.0, "medium": 0.6, "hard": 0.3}

# Studies per body part as (normal, abnormal), from Table 1 of the MURA paper (Rajpurkar et al., 2017).
MURA_STUDY_COUNTS: dict[str, dict[str, tuple[int, int]]] = {
    SPLIT_TRAIN: {
        "XR_ELBOW": (1094, 660),
        "XR_FINGER": (1280, 655),
        "XR_FOREARM": (590, 287),
        "XR_HAND": (1497, 521),
        "XR_HUMERUS": (321, 271),
        "XR_SHOULDER": (1364, 1457),
        "XR_WRIST": (2134, 1326),
    },
    SPLIT_VALID: {
        "XR_ELBOW": (92, 66),
        "XR_FINGER": (92, 83),
        "XR_FOREARM": (69, 64),
        "XR_HAND": (101, 66),
        "XR_HUMERUS": (68, 67),
        "XR_SHOULDER": (99, 95),
        "XR_WRIST": (140, 97),
    },
}
VIEW_COUNTS, VIEW_WEIGHTS = (1, 2, 3, 4), (0.12, 0.45, 0.33, 0.10)
STUDIES_PER_PATIENT, PATIENT_WEIGHTS = (1, 2, 3), (0.75, 0.18, 0.07)
KIND_WEIGHTS = (0.45, 0.25, 0.30)  # fracture, hardware, lesion
RGB_FRACTION = 0.1
NOISE_STREAM = 0x4015E  # an image's noise comes from the generator seeded (dataset seed, image index, NOISE_STREAM)


@dataclass(frozen=True)
class ImageSpec:
    """One image to draw: where it goes, what it shows, and the seed that fixes its pixels."""

    index: int
    image_path: str
    body_part: str
    finding: str | None
    rgb: bool


@dataclass(frozen=True)
class StudySpec:
    """One study of the plan."""

    split: str
    body_part: str
    patient_id: str
    study_path: str
    label: int
    images: tuple[ImageSpec, ...]


@dataclass
class SynthSummary:
    """What `generate_dataset` wrote, printed as a short human summary."""

    root: Path
    seed: int
    strength: float
    studies: dict[str, int] = field(default_factory=dict)
    abnormal: dict[str, int] = field(default_factory=dict)
    images: dict[str, int] = field(default_factory=dict)
    boxes: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        total = sum(self.images.values())
        lines = [f"Wrote a synthetic MURA dataset to {self.root} (seed {self.seed}, difficulty {self.strength:g})"]
        for split in (SPLIT_TRAIN, SPLIT_VALID):
            n = self.studies.get(split, 0)
            rate = self.abnormal.get(split, 0) / n if n else 0.0
            lines.append(f"  {split:5s}: {n:6d} studies ({rate:6.1%} abnormal), {self.images.get(split, 0):6d} images")
        speed = total / self.seconds if self.seconds > 0 else float("inf")
        lines.append(
            f"  {self.boxes} findings in {BOXES_CSV}; {total} images in {self.seconds:.1f} s ({speed:.0f} images/s)"
        )
        return "\n".join(lines)


def parse_difficulty(difficulty: str | float) -> float:
    """Turn ``easy``/``medium``/``hard`` or a number in (0, 1] into a finding strength (1 = easiest).

    Raises:
        UserError: the value is neither a known name nor a number in (0, 1].
    """
    if isinstance(difficulty, str) and difficulty.strip().lower() in DIFFICULTIES:
        return DIFFICULTIES[difficulty.strip().lower()]
    try:
        value = float(difficulty)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 < value <= 1.0:  # also rejects NaN
        names = ", ".join(DIFFICULTIES)
        raise UserError(f"--difficulty {difficulty!r} is unknown; choose one of {names}, or a number in (0, 1]")
    return value


def _allocate(total: int, weights: Sequence[float], minimum: int = 0) -> list[int]:
    """Split ``total`` into integer parts proportional to ``weights`` (largest remainder), each at least ``minimum``."""
    if total < minimum * len(weights):
        minimum = 0
    rest = total - minimum * len(weights)
    w = np.asarray(weights, dtype=np.float64)
    exact = rest * w / w.sum()
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: rest - counts.sum()]] += 1
    return [int(c) + minimum for c in counts]


def _split_cells(split: str, n: int) -> dict[tuple[str, int], int]:
    """Number of studies per (body part, label) in one split, following the MURA proportions."""
    table = MURA_STUDY_COUNTS[split]
    keys = [(part, label) for part in BODY_PARTS for label in (0, 1)]
    weights = [table[part][label] for part, label in keys]
    # At least one study per cell once there is room, so every body part has both labels.
    return dict(zip(keys, _allocate(n, weights, minimum=1 if n >= len(keys) else 0), strict=True))


def _finding_views(rng: np.random.Generator, n_views: int, strength: float) -> list[bool]:
    """Which views of an abnormal study show the finding: at least one, more often at easier settings."""
    shown = list(rng.random(n_views) < 0.25 + 0.7 * strength)
    if not any(shown):
        shown[int(rng.integers(n_views))] = True
    return shown


def plan_dataset(
    studies: int, seed: int, strength: float = 1.0, valid_share: float = 0.1, image_format: str = "png"
) -> list[StudySpec]:
    """Decide every study, patient and image of the dataset, without drawing anything.

    Patients belong to one split and one body part; study numbers restart per patient and image numbers
    start at 1, as in MURA.

    Args:
        studies: number of studies over both splits.
        seed: random seed.
        strength: finding strength from `parse_difficulty` (changes how many views show a finding).
        valid_share: share of the studies that go to the ``valid`` split.
        image_format: ``png`` or ``dicom``: the images' suffix (``.png`` or ``.dcm``); the plan is otherwise equal.

    Returns:
        The studies in the order their rows are written to the CSVs.
    """
    rng = np.random.default_rng([seed, 0x5EED])
    n_valid = round(studies * valid_share)
    plan: list[StudySpec] = []
    patient_number = 0
    image_index = 0
    for split, n_split in ((SPLIT_TRAIN, studies - n_valid), (SPLIT_VALID, n_valid)):
        cells = _split_cells(split, n_split)
        for part in BODY_PARTS:
            labels = [0] * cells[(part, 0)] + [1] * cells[(part, 1)]
            rng.shuffle(labels)
            while labels:
                per_patient = int(rng.choice(STUDIES_PER_PATIENT, p=PATIENT_WEIGHTS))
                patient_labels, labels = labels[:per_patient], labels[per_patient:]
                patient_number += 1
                patient_id = f"{patient_number:05d}"
                for study_number, label in enumerate(patient_labels, start=1):
                    study_path = (
                        f"{ROOT_NAME}/{split}/{part}/patient{patient_id}/"
                        f"study{study_number}_{'positive' if label else 'negative'}/"
                    )
                    n_views = int(rng.choice(VIEW_COUNTS, p=VIEW_WEIGHTS))
                    kind = str(rng.choice(FINDING_KINDS, p=KIND_WEIGHTS)) if label else None
                    shown = _finding_views(rng, n_views, strength) if label else [False] * n_views
                    images = []
                    for view in range(n_views):
                        images.append(
                            ImageSpec(
                                index=image_index,
                                image_path=f"{study_path}image{view + 1}{IMAGE_FORMATS[image_format]}",
                                body_part=part,
                                finding=kind if shown[view] else None,
                                rgb=bool(rng.random() < RGB_FRACTION),
                            )
                        )
                        image_index += 1
                    plan.append(StudySpec(split, part, patient_id, study_path, label, tuple(images)))
    return plan
