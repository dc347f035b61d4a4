"""`muratune predict`: image-path CSV in, study predictions out, in the official MURA submission format."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from muratune.constants import IMAGE_PATH, LABEL, STUDY_PATH
from muratune.ensemble.predictor import PROB, StudyPredictor
from muratune.errors import UserError
from muratune.fileio import refuse_existing, write_text


def read_image_list(path: Path) -> pd.DataFrame:
    """Read a ``valid_image_paths.csv``-style list: one image path per line, no header (blank lines skipped).

    Raises:
        UserError: the file is missing, unreadable or lists no image.
    """
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read the image list ({type(err).__name__}: {err})") from None
    paths = [line.split(",")[0].strip().strip('"') for line in lines]
    paths = [p for p in paths if p]
    if paths and not paths[0].lower().endswith((".png", ".jpg", ".jpeg")):
        paths = paths[1:]  # a header line
    if not paths:
        raise UserError(f"{path}: no image paths in the file")
    return pd.DataFrame({IMAGE_PATH: list(dict.fromkeys(paths))})


def default_root(input_csv: Path, first_image: str) -> Path:
    """The folder image paths are relative to: the CSV's parent's parent (``MURA-v1.1/..``), else the cwd."""
    root = input_csv.resolve().parent.parent
    if not (root / first_image).exists() and Path(first_image).exists():
        return Path.cwd()
    return root


def format_rows(studies: pd.DataFrame, probabilities: bool) -> str:
    """CSV text without header: ``study_path,label`` (and ``,prob`` when asked)."""
    lines = []
    for row in studies.itertuples(index=False):
        line = f"{getattr(row, STUDY_PATH)},{int(getattr(row, LABEL))}"
        lines.append(f"{line},{getattr(row, PROB):.6f}" if probabilities else line)
    return "".join(f"{line}\n" for line in lines)


def predict_csv(
    ensemble: str | os.PathLike,
    input_csv: str | os.PathLike,
    output_csv: str | os.PathLike,
    root: str | os.PathLike | None = None,
    probabilities: bool = False,
    overwrite: bool = False,
    warn: Callable[[str], None] = print,
    progress: bool = True,
) -> str:
    """Predict every study of an image list and write the submission CSV atomically.

    Unreadable images are reported through ``warn`` by name and their study is predicted from its other views.
    A study with no readable view is left out of the output, with a warning naming it.

    Args:
        ensemble: the ensemble folder.
        input_csv: image paths, one per line, relative to ``root``.
        output_csv: where to write ``study_path,label`` lines (no header).
        root: folder the image paths are relative to (default: see ``default_root``).
        probabilities: add the study probability as a third column.
        overwrite: replace an existing output file.
        warn: receives one line per unreadable image and per left-out study.
        progress: show a progress bar on stderr.

    Returns:
        A one-line summary.
    """
    input_csv, output_csv = Path(input_csv), Path(output_csv)
    refuse_existing(output_csv, overwrite)
    images = read_image_list(input_csv)
    base = Path(root) if root is not None else default_root(input_csv, images[IMAGE_PATH].iloc[0])
    predictor = StudyPredictor.load(ensemble)
    unreadable: list[str] = []

    def on_error(message: str) -> None:
        unreadable.append(message)
        warn(f"unreadable image: {message}")

    studies = predictor.predict_frame(images, root=base, progress=progress, on_error=on_error)
    missing = studies[PROB].isna()
    for path in studies.loc[missing, STUDY_PATH]:
        warn(f"study {path}: no readable image; left out of {output_csv}")
    write_text(output_csv, format_rows(studies[~missing], probabilities))
    return (
        f"wrote {int((~missing).sum())} studies to {output_csv} ({len(images)} images, {len(unreadable)} unreadable, "
        f"{int(missing.sum())} studies left out)"
    )
