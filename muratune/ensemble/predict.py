"""`muratune predict`: image-path CSV in, study predictions out, in the official MURA submission format."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from muratune.body_parts import body_part_in_path
from muratune.constants import BODY_PARTS, IMAGE_PATH, LABEL, PROB, STUDY_PATH
from muratune.data.image_list import default_root, parse_image_list
from muratune.data.images import bad_images_error, sniff_image
from muratune.ensemble.load import load_ensemble
from muratune.errors import UserError
from muratune.fileio import Input, check_output, refuse_existing, write_text


def format_rows(studies: pd.DataFrame, probabilities: bool) -> str:
    """CSV text without header: ``study_path,label`` (and ``,prob`` when asked)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")  # quotes a study path only when it holds a comma or a quote
    for row in studies.itertuples(index=False):
        fields = [getattr(row, STUDY_PATH), int(getattr(row, LABEL))]
        writer.writerow([*fields, f"{getattr(row, PROB):.6f}"] if probabilities else fields)
    return out.getvalue()


def unreadable_error(reasons: list[str]) -> UserError:
    """The error for unreadable listed images: the first one's ``file:row: path: reason`` and a count."""
    return bad_images_error(reasons, "to predict studies from their other views")


def check_images(rows: list[tuple[int, str]], base: Path, input_csv: Path) -> None:
    """Sniff every listed image (missing, empty, not an image, truncated PNG) before any model is loaded.

    Raises:
        UserError: naming the first bad image's CSV row, file and reason, with how many more there are.
    """
    bad = []
    for row, image in rows:
        reason = sniff_image(base / image)
        if reason is not None:
            bad.append(f"{input_csv}:{row}: {reason}")
    if bad:
        raise unreadable_error(bad)


def warn_unknown_body_parts(rows: list[tuple[int, str]], input_csv: Path, warn: Callable[[str], None]) -> None:
    """Warn once per unknown body part (or missing ``XR_<PART>`` folder), naming the first row and a count."""
    seen: dict[str | None, list[int]] = {}
    for row, image in rows:
        part = body_part_in_path(image)
        if part not in BODY_PARTS:
            seen.setdefault(part, []).append(row)
    for part, where in seen.items():
        what = f"unknown body part folder {part!r}" if part else "no XR_<PART> body part folder in the path"
        warn(
            f"{input_csv}:{where[0]}: {what} ({len(where)} image(s)); predicted with the ensemble's overall weights "
            f"and the default threshold"
        )


class UnreadableImages:
    """The error handler of a prediction: locates an unreadable image at its CSV row, then stops or warns."""

    def __init__(self, input_csv: Path, row_of: dict[str, int], skip: bool, warn: Callable[[str], None]) -> None:
        self.input_csv, self.row_of, self.skip, self.warn = input_csv, row_of, skip, warn
        self.located: list[str] = []

    def __call__(self, message: str) -> None:
        file = message.split(": ", 1)[0]
        located = f"{self.input_csv}:{self.row_of[file]}: {message}" if file in self.row_of else message
        if not self.skip:
            raise unreadable_error([located])
        self.located.append(located)
        self.warn(f"unreadable image: {located}")


def predict_csv(
    ensemble: str | os.PathLike,
    input_csv: str | os.PathLike,
    output_csv: str | os.PathLike,
    root: str | os.PathLike | None = None,
    probabilities: bool = False,
    overwrite: bool = False,
    warn: Callable[[str], None] = print,
    progress: bool = True,
    skip_bad_images: bool = False,
) -> str:
    """Predict every study of an image list and write the submission CSV atomically.

    An unreadable image (missing, empty, not an image, truncated, undecodable) stops the prediction with an error
    naming its row and file, and nothing is written. With ``skip_bad_images`` it is reported through ``warn``
    instead and its study is predicted from its other views; a study with no readable view is left out of the
    output, with a warning naming it. A path that is absolute or has a ``..`` segment is always refused.

    Args:
        ensemble: the ensemble folder.
        input_csv: image paths, one per line, relative to ``root``.
        output_csv: where to write ``study_path,label`` lines (no header).
        root: folder the image paths are relative to (default: see ``default_root``).
        probabilities: add the study probability as a third column.
        overwrite: replace an existing output file.
        warn: receives one line per skipped header or duplicate row, unknown body part, unreadable image (with
            ``skip_bad_images``) and left-out study.
        progress: show a progress bar on stderr.
        skip_bad_images: predict around unreadable images instead of stopping.

    Returns:
        A one-line summary.

    Raises:
        UserError: a bad input list, output, ensemble, or (without ``skip_bad_images``) an unreadable image.
    """
    input_csv, output_csv = Path(input_csv), Path(output_csv)
    inputs = [Input(ensemble, "the ensemble"), Input(input_csv, "the image list")]
    if (input_csv.parent / "train_image_paths.csv").is_file():
        inputs.append(Input(input_csv.parent, "the dataset"))
    check_output(output_csv, inputs, is_dir=False, flag="OUTPUT_CSV")
    refuse_existing(output_csv, overwrite)
    rows = parse_image_list(input_csv, warn)
    images = pd.DataFrame({IMAGE_PATH: [image for _, image in rows]})
    base = Path(root) if root is not None else default_root(input_csv, images[IMAGE_PATH].iloc[0])
    if not skip_bad_images:
        check_images(rows, base, input_csv)
    warn_unknown_body_parts(rows, input_csv, warn)
    predictor = load_ensemble(ensemble)
    unreadable = UnreadableImages(input_csv, {str(base / image): row for row, image in rows}, skip_bad_images, warn)
    studies = predictor.predict_frame(images, root=base, progress=progress, on_error=unreadable)
    missing = studies[PROB].isna()
    for path in studies.loc[missing, STUDY_PATH]:
        warn(f"study {path}: no readable image; left out of {output_csv}")
    write_text(output_csv, format_rows(studies[~missing], probabilities))
    counts = f"{len(images)} images, {len(unreadable.located)} unreadable, {int(missing.sum())} studies left out"
    return f"wrote {int((~missing).sum())} studies to {output_csv} ({counts})"
