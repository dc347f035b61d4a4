"""Score a MURA-format predictions file against the labelled studies (the `muratune score` command)."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import pandas as pd

from muratune.body_parts import body_part_in_path
from muratune.constants import BODY_PART, LABEL, PRED, PROB, STUDY_PATH
from muratune.errors import UserError
from muratune.report.bootstrap import DEFAULT_LEVEL, DEFAULT_REPLICATES
from muratune.report.scoring import format_score, score_studies


def _rows(path: Path) -> list[tuple[int, list[str]]]:
    """Non-blank CSV rows with their 1-based line numbers (a UTF-8 BOM, as Excel writes, and quoted fields read)."""
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return [(n, [c.strip() for c in row]) for n, row in enumerate(csv.reader(handle), 1) if any(row)]
    except (UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{path}: not a readable CSV file ({err})") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read the file ({err.strerror or err})") from None


def _study_key(path: Path, line: int, text: str) -> str:
    if not text:
        raise UserError(f"{path}, row {line}: empty study path")
    return text.rstrip("/") + "/"


def _binary(path: Path, line: int, text: str, what: str) -> int:
    if text not in ("0", "1"):
        raise UserError(f"{path}, row {line}: {what} must be 0 or 1 (got {text!r})")
    return int(text)


def _probability(path: Path, line: int, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise UserError(f"{path}, row {line}: probability must be a number in [0, 1] (got {text!r})")
    return value


def read_labels(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``valid_labeled_studies.csv`` (study path, 0/1; no header) into ``study_path, body_part, label``."""
    path = Path(path)
    records: dict[str, tuple[str, int]] = {}
    for line, row in _rows(path):
        if len(row) != 2:
            raise UserError(f"{path}, row {line}: expected 2 columns (study path, label), got {len(row)}")
        study = _study_key(path, line, row[0])
        part = body_part_in_path(study)
        if part is None:
            raise UserError(f"{path}, row {line}: no XR_<BODY_PART> folder in study path {row[0]!r}")
        if study in records:
            raise UserError(f"{path}, row {line}: duplicate study {row[0]!r}")
        records[study] = (part, _binary(path, line, row[1], "label"))
    if not records:
        raise UserError(f"{path}: no studies")
    return pd.DataFrame([(s, p, y) for s, (p, y) in records.items()], columns=[STUDY_PATH, BODY_PART, LABEL])


def read_predictions(path: str | os.PathLike) -> pd.DataFrame:
    """Read MURA-format predictions (study path, 0/1 and optionally a probability; no header).

    Returns:
        ``study_path, pred`` and ``prob`` when every row has a third column.
    """
    path = Path(path)
    records: dict[str, tuple[int, float]] = {}
    widths: set[int] = set()
    for line, row in _rows(path):
        if len(row) not in (2, 3):
            raise UserError(
                f"{path}, row {line}: expected 2 or 3 columns (study path, 0/1[, probability]), got {len(row)}"
            )
        if widths and len(row) not in widths:
            raise UserError(f"{path}, row {line}: {len(row)} columns, but earlier rows have {widths.pop()}")
        widths.add(len(row))
        study = _study_key(path, line, row[0])
        if study in records:
            raise UserError(f"{path}, row {line}: duplicate study {row[0]!r}")
        prob = _probability(path, line, row[2]) if len(row) == 3 else math.nan
        records[study] = (_binary(path, line, row[1], "prediction"), prob)
    if not records:
        raise UserError(f"{path}: no predictions")
    frame = pd.DataFrame([(s, p, q) for s, (p, q) in records.items()], columns=[STUDY_PATH, PRED, PROB])
    return frame if widths == {3} else frame.drop(columns=PROB)


def join_predictions(
    predictions: pd.DataFrame, labels: pd.DataFrame, pred_file: Path, label_file: Path
) -> pd.DataFrame:
    """Predictions beside their labels; every labelled study must be predicted exactly once, and nothing else."""
    extra = sorted(set(predictions[STUDY_PATH]) - set(labels[STUDY_PATH]))
    if extra:
        raise UserError(
            f"{pred_file}: {len(extra)} predicted stud{'y' if len(extra) == 1 else 'ies'} not in "
            f"{label_file}, e.g. {extra[0]!r}"
        )
    missing = sorted(set(labels[STUDY_PATH]) - set(predictions[STUDY_PATH]))
    if missing:
        raise UserError(
            f"{pred_file}: {len(missing)} stud{'y' if len(missing) == 1 else 'ies'} of {label_file} "
            f"not predicted, e.g. {missing[0]!r}"
        )
    return labels.merge(predictions, on=STUDY_PATH, how="left", validate="one_to_one")


def score_file(
    predictions: str | os.PathLike,
    labeled_studies: str | os.PathLike,
    replicates: int = DEFAULT_REPLICATES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> pd.DataFrame:
    """Score a predictions file against labelled studies; the same code the report uses.

    Returns:
        The ``score_studies`` table (per body part and overall).
    """
    if replicates < 1:
        raise UserError(f"--replicates {replicates}: must be at least 1")
    pred_file, label_file = Path(predictions), Path(labeled_studies)
    studies = join_predictions(read_predictions(pred_file), read_labels(label_file), pred_file, label_file)
    return score_studies(studies, replicates=replicates, seed=seed, level=level)


__all__ = ["format_score", "read_labels", "read_predictions", "score_file"]
