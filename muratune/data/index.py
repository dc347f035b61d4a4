"""The MURA index: parse and validate the four CSVs into one DataFrame with one row per image."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from muratune.constants import (
    BODY_PART,
    BODY_PARTS,
    IMAGE_PATH,
    LABEL,
    PATIENT_ID,
    SPLIT,
    STUDY_PATH,
    VIEW,
)
from muratune.data.dataset_root import SPLITS, DatasetRoot, image_csv_name, resolve_root, study_csv_name
from muratune.errors import UserError

STUDY_ID = "study_id"
COLUMNS: tuple[str, ...] = (IMAGE_PATH, STUDY_PATH, PATIENT_ID, BODY_PART, LABEL, SPLIT, VIEW, STUDY_ID)

IMAGE_PATTERN = "<dataset>/<split>/XR_<PART>/patient<digits>/study<N>_<positive|negative>/image<N>.png"
STUDY_PATTERN = "<dataset>/<split>/XR_<PART>/patient<digits>/study<N>_<positive|negative>/"
ESCAPES_ROOT = "path escapes the dataset root"

_PATIENT_RE = re.compile(r"patient\d+")
_STUDY_RE = re.compile(r"study(\d+)_(positive|negative)")
_IMAGE_RE = re.compile(r"image(\d+)\.(?:png|jpe?g)", re.IGNORECASE)
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_HEADER_WORD_RE = re.compile(r"[A-Za-z_ ]+")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the dataset, located by file and (1-based) row."""

    file: str
    row: int | None
    reason: str

    def __str__(self) -> str:
        if self.row is None:
            return f"{self.file}: {self.reason}"
        return f"{self.file}:{self.row}: {self.reason}"


@dataclass(frozen=True)
class PathParts:
    """The validated parts of an image or study path."""

    split: str
    body_part: str
    patient_id: str
    study_folder: str
    study_id: int
    folder_label: int
    view: int | None


@dataclass
class IndexScan:
    """Everything a scan of the CSVs found, with the CSV row of each image kept for later checks.

    Attributes:
        root: where the dataset lives.
        frame: one row per valid image (columns ``COLUMNS``); rows with problems are left out.
        problems: every problem found, in file order.
        image_rows: for each row of ``frame``, the image CSV and 1-based row it came from.
        study_rows: for each labeled study path, the study CSV and 1-based row it came from.
    """

    root: DatasetRoot
    frame: pd.DataFrame
    problems: list[Problem] = field(default_factory=list)
    image_rows: list[tuple[str, int]] = field(default_factory=list)
    study_rows: dict[str, tuple[str, int]] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ CSV lines
def read_csv_lines(path: Path, problems: list[Problem]) -> Iterator[tuple[int, str]]:
    """Yield ``(row, line)`` for each non-blank line of a text file, with CRLF endings and a UTF-8 BOM removed.

    Bytes that are not UTF-8 are reported as one problem per row; such rows are skipped.

    Raises:
        UserError: the file cannot be read at all.
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read the file ({err.strerror or err})") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for row, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(Problem(str(path), row, "line is not valid UTF-8 text"))
            continue
        line = line.removesuffix("\r")
        if line.strip():
            yield row, line


def split_fields(line: str) -> list[str]:
    """Split one CSV line into stripped fields (double quotes are honoured)."""
    try:
        fields = next(csv.reader([line]), [])
    except csv.Error:
        fields = line.split(",")
    return [value.strip() for value in fields]


def looks_like_header(fields: Sequence[str]) -> bool:
    """Return whether a row looks like a header (``path`` or ``study,label``) rather than data."""
    first = fields[0] if fields else ""
    return bool(first) and "/" not in first and _HEADER_WORD_RE.fullmatch(first) is not None


def path_escapes_root(path: str) -> bool:
    """Return whether a CSV path is absolute or has a ``..`` segment, so it could point outside the dataset."""
    if path.startswith(("/", "\\", "~")) or _DRIVE_RE.match(path):
        return True
    return any(segment == ".." for segment in re.split(r"[/\\]", path))


def parse_path(path: str, dataset_name: str, split: str, *, is_study: bool) -> PathParts | str:
    """Validate an image path (or a study path without its trailing slash) against the MURA layout.

    Args:
        path: the path as written in the CSV, relative to the folder holding the dataset folder.
        dataset_name: the dataset folder's name, which the path must start with.
        split: the split of the CSV the path comes from.
        is_study: whether the path names a study folder (5 segments) rather than an image (6).

    Returns:
        The parts of the path, or the reason it is refused.
    """
    if path_escapes_root(path):
        return ESCAPES_ROOT
    segments = path.split("/")
    pattern = STUDY_PATTERN if is_study else IMAGE_PATTERN
    if len(segments) != (5 if is_study else 6):
        return f"path {path!r} does not match {pattern}"
    dataset, split_folder, body_part, patient, study = segments[:5]
    if dataset != dataset_name:
        return f"path {path!r} should start with the dataset folder {dataset_name + '/'!r}"
    if split_folder != split:
        return f"split folder {split_folder!r} does not match the CSV's split {split!r}"
    if body_part not in BODY_PARTS:
        return f"unknown body part folder {body_part!r}; expected one of {', '.join(BODY_PARTS)}"
    if not _PATIENT_RE.fullmatch(patient):
        return f"patient folder {patient!r} does not match patient<digits>"
    study_match = _STUDY_RE.fullmatch(study)
    if study_match is None:
        return f"study folder {study!r} does not match study<N>_<positive|negative>"
    view = None
    if not is_study:
        image_match = _IMAGE_RE.fullmatch(segments[5])
        if image_match is None:
            return f"image file name {segments[5]!r} does not match image<N>.png"
        view = int(image_match.group(1))
    folder_label = 1 if study_match.group(2) == "positive" else 0
    return PathParts(split, body_part, patient, study, int(study_match.group(1)), folder_label, view)


# ------------------------------------------------------------------------------------------------ studies
@dataclass(frozen=True)
class LabeledStudy:
    """One valid row of a ``*_labeled_studies.csv`` file."""

    study_path: str
    label: int
    row: int


def parse_study_line(fields: Sequence[str], dataset_name: str, split: str) -> LabeledStudy | str:
    """Parse one row of a labeled-studies CSV (``study_path/,label``); return the study or the reason it is refused.

    The returned ``row`` is 0; the caller sets the real row number.
    """
    if len(fields) != 2:
        return f"expected 2 columns (study path, label), found {len(fields)}"
    study_path, label_text = fields
    if label_text not in ("0", "1"):
        return f"label {label_text!r} must be 0 or 1"
    parts = parse_path(study_path.removesuffix("/"), dataset_name, split, is_study=True)
    if isinstance(parts, str):
        return parts
    label = int(label_text)
    if label != parts.folder_label:
        return (
            f"label {label} disagrees with the study folder name {parts.study_folder!r} (expected {parts.folder_label})"
        )
    return LabeledStudy(study_path.removesuffix("/") + "/", label, 0)


def _scan_studies(csv_path: Path, dataset_name: str, split: str, problems: list[Problem]) -> dict[str, LabeledStudy]:
    studies: dict[str, LabeledStudy] = {}
    for index, (row, line) in enumerate(read_csv_lines(csv_path, problems)):
        fields = split_fields(line)
        if index == 0 and looks_like_header(fields):
            problems.append(Problem(str(csv_path), row, "looks like a header row; MURA CSVs have no header"))
            continue
        parsed = parse_study_line(fields, dataset_name, split)
        if isinstance(parsed, str):
            problems.append(Problem(str(csv_path), row, parsed))
            continue
        first = studies.get(parsed.study_path)
        if first is not None:
            problems.append(Problem(str(csv_path), row, f"duplicate study (first listed at row {first.row})"))
            continue
        studies[parsed.study_path] = LabeledStudy(parsed.study_path, parsed.label, row)
    return studies


# ------------------------------------------------------------------------------------------------ images
def parse_image_line(fields: Sequence[str], dataset_name: str, split: str) -> tuple[str, PathParts] | str:
    """Parse one row of an image-paths CSV; return ``(image_path, parts)`` or the reason it is refused."""
    if len(fields) != 1:
        return f"expected 1 column (an image path), found {len(fields)}"
    image_path = fields[0]
    parts = parse_path(image_path, dataset_name, split, is_study=False)
    if isinstance(parts, str):
        return parts
    return image_path, parts


def _scan_images(
    csv_path: Path,
    dataset_name: str,
    split: str,
    studies: dict[str, LabeledStudy],
    problems: list[Problem],
) -> tuple[list[dict], list[tuple[str, int]]]:
    records: list[dict] = []
    rows: list[tuple[str, int]] = []
    first_rows: dict[str, int] = {}
    labels_csv = study_csv_name(split)
    for index, (row, line) in enumerate(read_csv_lines(csv_path, problems)):
        fields = split_fields(line)
        if index == 0 and looks_like_header(fields):
            problems.append(Problem(str(csv_path), row, "looks like a header row; MURA CSVs have no header"))
            continue
        parsed = parse_image_line(fields, dataset_name, split)
        if isinstance(parsed, str):
            problems.append(Problem(str(csv_path), row, parsed))
            continue
        image_path, parts = parsed
        if image_path in first_rows:
            problems.append(
                Problem(str(csv_path), row, f"duplicate image (first listed at row {first_rows[image_path]})")
            )
            continue
        first_rows[image_path] = row
        study_path = image_path.rsplit("/", 1)[0] + "/"
        study = studies.get(study_path)
        if study is None:
            problems.append(Problem(str(csv_path), row, f"study {study_path} is not in {labels_csv}"))
            continue
        records.append(_image_record(image_path, study_path, parts, study.label))
        rows.append((str(csv_path), row))
    return records, rows


def _image_record(image_path: str, study_path: str, parts: PathParts, label: int) -> dict:
    return {
        IMAGE_PATH: image_path,
        STUDY_PATH: study_path,
        PATIENT_ID: parts.patient_id,
        BODY_PART: parts.body_part,
        LABEL: label,
        SPLIT: parts.split,
        VIEW: parts.view,
        STUDY_ID: parts.study_id,
    }


def _studies_without_images(
    csv_path: Path, studies: dict[str, LabeledStudy], records: Iterable[dict], split: str
) -> list[Problem]:
    seen = {record[STUDY_PATH] for record in records}
    return [
        Problem(str(csv_path), study.row, f"study has no images in {image_csv_name(split)}")
        for study in studies.values()
        if study.study_path not in seen
    ]


# ------------------------------------------------------------------------------------------------ index
def make_frame(records: list[dict], base: Path | str) -> pd.DataFrame:
    """Build the index DataFrame from image records, with typed columns and ``attrs["root"]`` set."""
    frame = pd.DataFrame.from_records(records, columns=list(COLUMNS))
    for column in (LABEL, VIEW, STUDY_ID):
        frame[column] = frame[column].astype("int64")
    for column in (IMAGE_PATH, STUDY_PATH, PATIENT_ID, BODY_PART, SPLIT):
        frame[column] = frame[column].astype(str)
    frame.attrs["root"] = str(base)
    return frame


def scan(root: str | Path, splits: Sequence[str] = SPLITS) -> IndexScan:
    """Parse the CSVs of the given splits, collecting every problem, and keep CSV rows for further checks.

    Raises:
        UserError: the dataset folder or one of its CSVs is missing.
    """
    dataset = resolve_root(root, splits)
    problems: list[Problem] = []
    records: list[dict] = []
    image_rows: list[tuple[str, int]] = []
    study_rows: dict[str, tuple[str, int]] = {}
    for split in splits:
        study_csv = dataset.csv_path(study_csv_name(split))
        image_csv = dataset.csv_path(image_csv_name(split))
        studies = _scan_studies(study_csv, dataset.name, split, problems)
        split_records, split_rows = _scan_images(image_csv, dataset.name, split, studies, problems)
        problems.extend(_studies_without_images(study_csv, studies, split_records, split))
        records.extend(split_records)
        image_rows.extend(split_rows)
        study_rows.update({path: (str(study_csv), study.row) for path, study in studies.items()})
    return IndexScan(dataset, make_frame(records, dataset.base), problems, image_rows, study_rows)


def scan_index(root: str | Path, splits: Sequence[str] = SPLITS) -> tuple[pd.DataFrame, list[Problem]]:
    """Parse the CSVs of the given splits into the index, collecting every problem instead of stopping.

    Args:
        root: the folder holding ``MURA-v1.1/``, or the dataset folder itself.
        splits: which splits to read.

    Returns:
        The index (one row per image, in CSV order, without the rows that have problems) and the problems.

    Raises:
        UserError: the dataset folder or one of its CSVs is missing.
    """
    result = scan(root, splits)
    return result.frame, result.problems


def load_index(root: str | Path, splits: Sequence[str] = SPLITS) -> pd.DataFrame:
    """Parse the CSVs of the given splits into the index, failing on the first problem.

    Raises:
        UserError: a folder or CSV is missing, or a CSV has a problem (the message names file and row).
    """
    frame, problems = scan_index(root, splits)
    if problems:
        more = f" (+{len(problems) - 1} more; run `muratune data check`)" if len(problems) > 1 else ""
        raise UserError(f"{problems[0]}{more}")
    return frame


def absolute_image_paths(frame: pd.DataFrame) -> pd.Series:
    """Return the absolute path of every image of an index (``attrs["root"]`` joined with ``image_path``)."""
    if "root" not in frame.attrs:
        raise ValueError("the index has no attrs['root']; build it with load_index or scan_index")
    base = Path(frame.attrs["root"])
    return pd.Series([base / path for path in frame[IMAGE_PATH]], index=frame.index, name=IMAGE_PATH, dtype=object)
