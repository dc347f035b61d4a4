"""`muratune predict`: image-path CSV in, study predictions out, in the official MURA submission format."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from muratune.constants import BODY_PARTS, IMAGE_PATH, LABEL, STUDY_PATH
from muratune.data.images import sniff_image
from muratune.data.index import ESCAPES_ROOT, looks_like_header, path_escapes_root, split_fields
from muratune.ensemble.predictor import PROB, StudyPredictor, infer_body_part
from muratune.errors import UserError
from muratune.fileio import refuse_existing, write_text


def parse_image_list(path: Path, warn: Callable[[str], None] | None = None) -> list[tuple[int, str]]:
    """Read a ``valid_image_paths.csv``-style list into ``(row, image_path)`` pairs (rows are 1-based lines).

    Blank lines, CRLF endings, a UTF-8 BOM and quoted fields (a quoted path may hold a comma) are accepted; a
    header line (a first line of words only, such as ``path`` or ``image_path``) is skipped, and a duplicated path
    is kept once, each with a warning.

    Raises:
        UserError: the file is missing, unreadable or lists no image, or a path is absolute, has a ``..`` segment
            (it could read files outside the image root) or holds a control character such as NUL.
    """
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read the image list ({type(err).__name__}: {err})") from None
    say = warn or (lambda _: None)
    rows = [(row, (split_fields(line) or [""])[0]) for row, line in enumerate(lines, start=1)]
    rows = [(row, image) for row, image in rows if image]
    if rows and looks_like_header([rows[0][1]]):
        say(f"{path}:{rows[0][0]}: {rows[0][1]!r} looks like a header row; skipped")
        rows = rows[1:]
    if not rows:
        raise UserError(f"{path}: no image paths in the file")
    first: dict[str, int] = {}
    for row, image in rows:
        if path_escapes_root(image):
            raise UserError(f"{path}:{row}: {image!r}: {ESCAPES_ROOT} (absolute or with '..'); refusing to read it")
        if not image.isprintable():
            raise UserError(f"{path}:{row}: {image!r}: the image path holds a control character (such as NUL)")
        if image in first:
            say(f"{path}:{row}: duplicate of row {first[image]}; predicted once")
        else:
            first[image] = row
    return [(row, image) for image, row in first.items()]


def read_image_list(path: Path, warn: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Read a ``valid_image_paths.csv``-style list as a frame with one ``image_path`` per distinct image.

    See `parse_image_list` for what is accepted, warned about and refused.
    """
    return pd.DataFrame({IMAGE_PATH: [image for _, image in parse_image_list(path, warn)]})


def default_root(input_csv: Path, first_image: str) -> Path:
    """The folder image paths are relative to: the CSV's parent's parent (``MURA-v1.1/..``), else the cwd."""
    root = input_csv.resolve().parent.parent
    if not (root / first_image).exists() and Path(first_image).exists():
        return Path.cwd()
    return root


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
    more = f" (+{len(reasons) - 1} more unreadable)" if len(reasons) > 1 else ""
    return UserError(
        f"{reasons[0]}{more}; fix the files or pass --skip-bad-images to predict studies from their other views"
    )


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
        part = infer_body_part(image)
        if part not in BODY_PARTS:
            seen.setdefault(part, []).append(row)
    for part, where in seen.items():
        what = f"unknown body part folder {part!r}" if part else "no XR_<PART> body part folder in the path"
        warn(
            f"{input_csv}:{where[0]}: {what} ({len(where)} image(s)); predicted with the ensemble's overall weights "
            f"and the default threshold"
        )


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
    refuse_existing(output_csv, overwrite)
    rows = parse_image_list(input_csv, warn)
    images = pd.DataFrame({IMAGE_PATH: [image for _, image in rows]})
    base = Path(root) if root is not None else default_root(input_csv, images[IMAGE_PATH].iloc[0])
    if not skip_bad_images:
        check_images(rows, base, input_csv)
    warn_unknown_body_parts(rows, input_csv, warn)
    predictor = StudyPredictor.load(ensemble)
    row_of = {str(base / image): row for row, image in rows}
    unreadable: list[str] = []

    def on_error(message: str) -> None:
        file = message.split(": ", 1)[0]
        located = f"{input_csv}:{row_of[file]}: {message}" if file in row_of else message
        if not skip_bad_images:
            raise unreadable_error([located])
        unreadable.append(located)
        warn(f"unreadable image: {located}")

    studies = predictor.predict_frame(images, root=base, progress=progress, on_error=on_error)
    missing = studies[PROB].isna()
    for path in studies.loc[missing, STUDY_PATH]:
        warn(f"study {path}: no readable image; left out of {output_csv}")
    write_text(output_csv, format_rows(studies[~missing], probabilities))
    return (
        f"wrote {int((~missing).sum())} studies to {output_csv} ({len(images)} images, {len(unreadable)} unreadable, "
        f"{int(missing.sum())} studies left out)"
    )
