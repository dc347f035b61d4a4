"""Where a MURA-format dataset lives: the folder holding ``MURA-v1.1/`` (or the dataset folder) and its CSV names."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from muratune.constants import SPLIT_TRAIN, SPLIT_VALID
from muratune.errors import UserError

SPLITS: tuple[str, ...] = (SPLIT_TRAIN, SPLIT_VALID)
DEFAULT_DATASET_DIR = "MURA-v1.1"


def image_csv_name(split: str) -> str:
    """Return the file name of a split's image list, e.g. ``train_image_paths.csv``."""
    return f"{split}_image_paths.csv"


def study_csv_name(split: str) -> str:
    """Return the file name of a split's study labels, e.g. ``train_labeled_studies.csv``."""
    return f"{split}_labeled_studies.csv"


@dataclass(frozen=True)
class DatasetRoot:
    """Where a dataset lives.

    Attributes:
        base: the folder the CSV paths are relative to (the one holding ``MURA-v1.1/``).
        dataset_dir: the dataset folder itself (holding the CSVs and the split folders).
    """

    base: Path
    dataset_dir: Path

    @property
    def name(self) -> str:
        """The dataset folder's name, which every CSV path starts with."""
        return self.dataset_dir.name

    def csv_path(self, name: str) -> Path:
        """Return the path of one of the dataset's CSV files."""
        return self.dataset_dir / name


def _is_dataset_dir(folder: Path) -> bool:
    return (folder / image_csv_name(SPLIT_TRAIN)).is_file()


def _find_dataset_dir(root: Path) -> Path | None:
    if _is_dataset_dir(root):
        return root
    if _is_dataset_dir(root / DEFAULT_DATASET_DIR):
        return root / DEFAULT_DATASET_DIR
    try:
        candidates = sorted(child for child in root.iterdir() if child.is_dir() and _is_dataset_dir(child))
    except OSError as err:
        raise UserError(f"{root}: cannot list the folder ({err.strerror or err})") from None
    if len(candidates) > 1:
        names = ", ".join(child.name for child in candidates)
        raise UserError(f"{root}: holds several datasets ({names}); pass one of them")
    return candidates[0] if candidates else None


def resolve_root(root: str | Path, splits: Sequence[str] = SPLITS) -> DatasetRoot:
    """Find the dataset folder from the folder holding ``MURA-v1.1/`` or from the dataset folder itself.

    Any folder name is accepted for the dataset folder, as long as it holds ``train_image_paths.csv``.

    Args:
        root: the folder holding the dataset folder, or the dataset folder.
        splits: the splits whose two CSVs must exist.

    Raises:
        UserError: the folder or one of the expected CSVs is missing.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise UserError(
            f"{root}: folder not found; expected a MURA dataset (the folder holding {DEFAULT_DATASET_DIR}/)"
        )
    if not root.is_dir():
        raise UserError(f"{root}: not a folder; expected a MURA dataset (the folder holding {DEFAULT_DATASET_DIR}/)")
    dataset_dir = _find_dataset_dir(root)
    if dataset_dir is None:
        raise UserError(
            f"{root}: no MURA dataset found; expected {DEFAULT_DATASET_DIR}/{image_csv_name(SPLIT_TRAIN)} "
            f"or {image_csv_name(SPLIT_TRAIN)} in this folder"
        )
    for split in splits:
        _check_split_name(split)
        for name in (image_csv_name(split), study_csv_name(split)):
            if not (dataset_dir / name).is_file():
                raise UserError(f"{dataset_dir / name}: file not found; a MURA dataset has {name} for split {split}")
    return DatasetRoot(base=dataset_dir.parent.resolve(), dataset_dir=dataset_dir.resolve())


def _check_split_name(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"split {split!r} is unknown; choose from {', '.join(SPLITS)}")
