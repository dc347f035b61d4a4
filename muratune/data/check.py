"""`muratune data check`: validate a MURA-format dataset (CSVs, files on disk, decodability) and tabulate it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from muratune.constants import (
    BODY_PART,
    BODY_PARTS,
    IMAGE_PATH,
    LABEL,
    PATIENT_ID,
    SPLIT,
    SPLIT_TRAIN,
    SPLIT_VALID,
    STUDY_PATH,
    short_part,
)
from muratune.data.images import read_image, sniff_image
from muratune.data.index import SPLITS, DatasetRoot, IndexScan, Problem, image_csv_name, scan, study_csv_name
from muratune.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")
TABLE_COLUMNS: tuple[str, ...] = ("normal", "abnormal", "studies", "images")
TOTAL = "total"
# Below this many images a pool costs more than it saves.
MIN_IMAGES_FOR_POOL = 64


@dataclass
class CheckReport:
    """What `check_dataset` found.

    Attributes:
        root: where the dataset lives.
        table: studies (normal, abnormal, total) and images per body part and split, with a total row.
        problems: every problem found; empty means the dataset is fine.
    """

    root: DatasetRoot
    table: pd.DataFrame
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether no problem was found."""
        return not self.problems

    def format_table(self) -> str:
        """Return the table as text, laid out like Table 1 of the MURA paper."""
        return f"{self.root.name} at {self.root.dataset_dir}\n{format_count_table(self.table)}"


def check_dataset(
    root: str | Path,
    csv_only: bool = False,
    deep: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> CheckReport:
    """Validate a MURA-format dataset and count its studies and images.

    Args:
        root: the folder holding ``MURA-v1.1/``, or the dataset folder itself.
        csv_only: check the CSVs only, without looking at the image files.
        deep: decode every image (ignored with ``csv_only``). Without it, only the first and last bytes of each
            image are read (`sniff_image`): empty, non-image and truncated PNG files are still found.
        workers: threads used to read images (default: the usable cores).
        progress: show a progress bar while decoding.

    Returns:
        The report; its problems are in file order.

    Raises:
        UserError: the dataset folder or one of its CSVs is missing.
    """
    result = scan(root, SPLITS)
    problems = list(result.problems)
    problems.extend(empty_splits(result))
    problems.extend(patients_in_both_splits(result))
    if not csv_only:
        missing, unlisted = files_on_disk(result)
        problems.extend(missing)
        problems.extend(unlisted)
        skip = {(problem.file, problem.row) for problem in missing}
        problems.extend(undecodable_images(result, skip, workers, progress, decode=deep))
    return CheckReport(result.root, count_table(result.frame), problems)


# ------------------------------------------------------------------------------------------------ checks
def empty_splits(result: IndexScan) -> list[Problem]:
    """Report each split with no study: an empty train split trains nothing, an empty valid split tests nothing."""
    found = []
    for split in SPLITS:
        if not (result.frame[SPLIT] == split).any():
            csv_path = result.root.csv_path(study_csv_name(split))
            use = "the held-out test set" if split == SPLIT_VALID else "what the search trains on"
            found.append(Problem(str(csv_path), None, f"the {split} split has no studies; it is {use}"))
    return found


def patients_in_both_splits(result: IndexScan) -> list[Problem]:
    """Report each patient of the valid split who also has studies in the train split."""
    frame = result.frame
    train_patients = set(frame.loc[frame[SPLIT] == SPLIT_TRAIN, PATIENT_ID])
    valid = frame.loc[frame[SPLIT] == SPLIT_VALID].drop_duplicates(PATIENT_ID)
    found: list[Problem] = []
    for patient_id, study_path in zip(valid[PATIENT_ID], valid[STUDY_PATH], strict=True):
        if patient_id in train_patients:
            file, row = result.study_rows[study_path]
            reason = f"patient {patient_id} also has studies in the {SPLIT_TRAIN} split; patients must not cross splits"
            found.append(Problem(file, row, reason))
    return found


def files_on_disk(result: IndexScan) -> tuple[list[Problem], list[Problem]]:
    """Compare each listed study folder with the disk, listing every folder once.

    Returns:
        Listed images that are missing (located at their CSV row), and image files in listed study folders that
        no CSV row lists (located at the file itself).
    """
    base = result.root.base
    frame = result.frame
    listings: dict[str, frozenset[str]] = {}
    listed_by_study: dict[str, set[str]] = {}
    missing: list[Problem] = []
    for position, (image_path, study_path) in enumerate(zip(frame[IMAGE_PATH], frame[STUDY_PATH], strict=True)):
        if study_path not in listings:
            listings[study_path] = list_image_files(base / study_path)
        name = image_path.rsplit("/", 1)[1]
        listed_by_study.setdefault(study_path, set()).add(name)
        if name not in listings[study_path]:
            file, row = result.image_rows[position]
            missing.append(Problem(file, row, f"image file not found: {base / image_path}"))
    split_of_study = dict(zip(frame[STUDY_PATH], frame[SPLIT], strict=True))
    unlisted: list[Problem] = []
    for study_path, listed in listed_by_study.items():
        csv_name = image_csv_name(split_of_study[study_path])
        for name in sorted(listings[study_path] - listed):
            unlisted.append(Problem(str(base / study_path / name), None, f"image file is not listed in {csv_name}"))
    return missing, unlisted


def list_image_files(folder: Path) -> frozenset[str]:
    """Return the image file names in a folder (hidden files such as macOS ``._*`` are ignored).

    An entry that cannot be examined (a symlink loop, no permission) counts as a file: reading it later reports why.
    """
    try:
        with os.scandir(folder) as entries:
            return frozenset(
                entry.name
                for entry in entries
                if not entry.name.startswith(".") and entry.name.lower().endswith(IMAGE_SUFFIXES) and _is_file(entry)
            )
    except (OSError, ValueError):
        return frozenset()


def _is_file(entry: os.DirEntry) -> bool:
    """Whether a folder entry is a file, or cannot be examined (``is_file`` raises on a symlink loop)."""
    try:
        return entry.is_file()
    except OSError:
        return True


def undecodable_images(
    result: IndexScan,
    skip: set[tuple[str, int | None]],
    workers: int | None = None,
    progress: bool = True,
    decode: bool = True,
) -> list[Problem]:
    """Decode every listed image (except those in ``skip``) and report the ones that cannot be read.

    With ``decode=False`` the images are only sniffed (first and last bytes, see `sniff_image`), which is fast.
    """
    paths: list[str] = []
    locations: list[tuple[str, int]] = []
    base = result.root.base
    for position, image_path in enumerate(result.frame[IMAGE_PATH]):
        if result.image_rows[position] not in skip:
            paths.append(str(base / image_path))
            locations.append(result.image_rows[position])
    found: list[Problem] = []
    check = decode_problem if decode else sniff_image
    bar = tqdm(total=len(paths), desc="decoding images", unit="img", disable=not progress or not decode)
    with bar:
        for (file, row), reason in zip(locations, _map(check, paths, workers), strict=True):
            bar.update()
            if reason is not None:
                found.append(Problem(file, row, f"unreadable image {reason}"))
    return found


def decode_problem(path: str) -> str | None:
    """Decode one image; return None if it reads, else the reason (``path: reason``) it does not."""
    try:
        read_image(path)
    except UserError as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 - any decoder failure is a problem with this file, not a crash
        return f"{path}: {type(err).__name__}: {err}"
    return None


def _map(check: Callable[[str], str | None], paths: list[str], workers: int | None) -> Iterator[str | None]:
    """Yield the result of ``check`` for every path, in order, with a thread pool when it pays off.

    Threads rather than processes: Pillow releases the GIL while decoding, and threads need no re-import of
    ``__main__`` (which breaks spawned processes under notebooks and stdin scripts).
    """
    workers = workers if workers is not None else _usable_cores()
    if workers <= 1 or len(paths) < MIN_IMAGES_FOR_POOL:
        yield from (check(path) for path in paths)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(check, paths)


def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# ------------------------------------------------------------------------------------------------ table
def count_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Count studies (normal, abnormal, total) and images per body part and split, with a total row.

    Returns:
        A DataFrame indexed by short body part name (``elbow`` … ``wrist``, ``total``) with columns
        ``(split, "normal"|"abnormal"|"studies"|"images")``.
    """
    index = [short_part(part) for part in BODY_PARTS] + [TOTAL]
    columns = pd.MultiIndex.from_product([list(SPLITS), list(TABLE_COLUMNS)], names=["split", "count"])
    table = pd.DataFrame(0, index=index, columns=columns, dtype="int64")
    table.index.name = "body part"
    for split in SPLITS:
        rows = frame.loc[frame[SPLIT] == split]
        studies = rows.drop_duplicates(STUDY_PATH)
        for part in BODY_PARTS:
            part_studies = studies.loc[studies[BODY_PART] == part, LABEL]
            name = short_part(part)
            table.loc[name, (split, "normal")] = int((part_studies == 0).sum())
            table.loc[name, (split, "abnormal")] = int((part_studies == 1).sum())
            table.loc[name, (split, "studies")] = len(part_studies)
            table.loc[name, (split, "images")] = int((rows[BODY_PART] == part).sum())
    table.loc[TOTAL] = table.drop(index=TOTAL).sum()
    return table


def format_count_table(table: pd.DataFrame) -> str:
    """Render a `count_table` as aligned text with thousands separators and one column group per split."""
    cells = [[f"{int(value):,}" for value in table.loc[name]] for name in table.index]
    width = max([len(c) for row in cells for c in row] + [len(c) for c in TABLE_COLUMNS])
    label_width = max(len(str(name)) for name in [table.index.name, *table.index])
    splits = list(dict.fromkeys(table.columns.get_level_values(0)))
    group = len(TABLE_COLUMNS) * (width + 1) - 1
    lines = [" " * label_width + "   " + "   ".join(f" {split} ".center(group, "-") for split in splits)]
    header = [c.rjust(width) for _ in splits for c in TABLE_COLUMNS]
    lines.append(str(table.index.name).ljust(label_width) + _join_groups(header, len(TABLE_COLUMNS)))
    for name, row in zip(table.index, cells, strict=True):
        lines.append(str(name).ljust(label_width) + _join_groups([c.rjust(width) for c in row], len(TABLE_COLUMNS)))
    return "\n".join(lines)


def _join_groups(cells: list[str], size: int) -> str:
    groups = [" ".join(cells[i : i + size]) for i in range(0, len(cells), size)]
    return "   " + "   ".join(groups)
