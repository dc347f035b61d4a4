"""Tiny MURA-layout datasets built directly in a temporary folder, independent of the synthetic generator."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from muratune.constants import BODY_PARTS

TRAIN_IMAGES = "train_image_paths.csv"
TRAIN_STUDIES = "train_labeled_studies.csv"

# Table 1 of the MURA paper (v1.1): studies (normal, abnormal) and images per body part and split.
MURA_V11_COUNTS: dict[str, dict[str, tuple[int, int, int]]] = {
    "train": {
        "XR_ELBOW": (1094, 660, 4931),
        "XR_FINGER": (1280, 655, 5106),
        "XR_FOREARM": (590, 287, 1825),
        "XR_HAND": (1497, 521, 5543),
        "XR_HUMERUS": (321, 271, 1272),
        "XR_SHOULDER": (1364, 1457, 8379),
        "XR_WRIST": (2134, 1326, 9752),
    },
    "valid": {
        "XR_ELBOW": (92, 66, 465),
        "XR_FINGER": (92, 83, 461),
        "XR_FOREARM": (69, 64, 301),
        "XR_HAND": (101, 66, 460),
        "XR_HUMERUS": (68, 67, 288),
        "XR_SHOULDER": (99, 95, 563),
        "XR_WRIST": (140, 97, 659),
    },
}


@dataclass
class MuraFixture:
    """A dataset written to disk, with what was written, in CSV order."""

    base: Path
    dataset_dir: Path
    images: list[tuple[str, str, int, str]] = field(default_factory=list)  # image_path, study_path, label, split
    studies: list[tuple[str, int, str]] = field(default_factory=list)  # study_path, label, split

    def csv(self, name: str) -> Path:
        """Return the path of one of the dataset's CSVs, e.g. ``csv("train_image_paths.csv")``."""
        return self.dataset_dir / name


def write_png(path: Path, seed: int = 0, size: tuple[int, int] = (12, 10)) -> None:
    """Write a tiny 8-bit grayscale PNG of random noise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0]), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(path)


def make_mura(
    tmp_path: Path,
    name: str = "MURA-v1.1",
    patients_per_part: int = 2,
    valid_patients_per_part: int = 1,
    write_images: bool = True,
) -> MuraFixture:
    """Build a small dataset in the MURA v1.1 layout under ``tmp_path`` (which holds the ``name`` folder).

    Every body part gets patients with one or two studies (alternating normal/abnormal) of one to three images.
    Patient numbers are unique across splits.
    """
    dataset_dir = tmp_path / name
    dataset_dir.mkdir(parents=True)
    fixture = MuraFixture(base=tmp_path, dataset_dir=dataset_dir)
    patient = 0
    for split, per_part in (("train", patients_per_part), ("valid", valid_patients_per_part)):
        for part_index, part in enumerate(BODY_PARTS):
            for _ in range(per_part):
                patient += 1
                for study in range(1, 1 + (patient % 2) + 1):
                    label = (patient + study + part_index) % 2
                    folder = f"study{study}_{'positive' if label else 'negative'}"
                    study_path = f"{name}/{split}/{part}/patient{patient:05d}/{folder}/"
                    fixture.studies.append((study_path, label, split))
                    for view in range(1, (patient + study) % 3 + 2):
                        fixture.images.append((f"{study_path}image{view}.png", study_path, label, split))
    _write_csvs(fixture, name)
    if write_images:
        for seed, (image_path, *_rest) in enumerate(fixture.images):
            write_png(tmp_path / image_path, seed=seed)
    return fixture


def _write_csvs(fixture: MuraFixture, name: str) -> None:
    for split in ("train", "valid"):
        images = [image for image, _study, _label, image_split in fixture.images if image_split == split]
        studies = [f"{study},{label}" for study, label, study_split in fixture.studies if study_split == split]
        (fixture.dataset_dir / f"{split}_image_paths.csv").write_text("".join(f"{line}\n" for line in images))
        (fixture.dataset_dir / f"{split}_labeled_studies.csv").write_text("".join(f"{line}\n" for line in studies))


def make_mura_csvs(
    tmp_path: Path,
    counts: dict[str, dict[str, tuple[int, int, int]]] | None = None,
    seed: int = 0,
    name: str = "MURA-v1.1",
) -> MuraFixture:
    """Write only the four CSVs (no images) with exactly the given study and image counts (default: MURA v1.1).

    Patients get one to three studies, possibly in several body parts; studies get one or more images.
    """
    counts = counts or MURA_V11_COUNTS
    rng = np.random.default_rng(seed)
    dataset_dir = tmp_path / name
    dataset_dir.mkdir(parents=True)
    fixture = MuraFixture(base=tmp_path, dataset_dir=dataset_dir)
    next_patient = 1
    for split, per_part in counts.items():
        studies = [(part, 0) for part, (n_normal, _, _) in per_part.items() for _ in range(n_normal)]
        studies += [(part, 1) for part, (_, n_abnormal, _) in per_part.items() for _ in range(n_abnormal)]
        studies = [studies[i] for i in rng.permutation(len(studies))]
        images_left = {part: n_images for part, (_, _, n_images) in per_part.items()}
        studies_left = {part: n_normal + n_abnormal for part, (n_normal, n_abnormal, _) in per_part.items()}
        position = 0
        while position < len(studies):
            size = int(rng.choice([1, 1, 1, 2, 2, 3]))
            study_numbers: dict[str, int] = {}
            for part, label in studies[position : position + size]:
                study_numbers[part] = study_numbers.get(part, 0) + 1
                folder = f"study{study_numbers[part]}_{'positive' if label else 'negative'}"
                study_path = f"{name}/{split}/{part}/patient{next_patient:05d}/{folder}/"
                fixture.studies.append((study_path, label, split))
                n_views = _views_for_study(images_left[part], studies_left[part], rng)
                images_left[part] -= n_views
                studies_left[part] -= 1
                for view in range(1, n_views + 1):
                    fixture.images.append((f"{study_path}image{view}.png", study_path, label, split))
            position += size
            next_patient += 1
    _write_csvs(fixture, name)
    return fixture


def _views_for_study(images_left: int, studies_left: int, rng: np.random.Generator) -> int:
    """Draw a view count so that every remaining study can still get at least one image."""
    if studies_left == 1:
        return images_left
    spare = images_left - studies_left
    mean_extra = spare / studies_left
    return 1 + min(spare, int(rng.poisson(mean_extra)))


def edit_lines(path: Path, edit: Callable[[list[str]], list[str]]) -> None:
    """Rewrite a CSV through a function of its lines (without line endings)."""
    lines = path.read_text().splitlines()
    path.write_text("".join(f"{line}\n" for line in edit(lines)))
