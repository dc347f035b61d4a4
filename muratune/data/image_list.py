"""Image lists (``valid_image_paths.csv`` style): one relative image path per line, and the folder they are under."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from muratune.constants import IMAGE_PATH
from muratune.data.index import ESCAPES_ROOT, looks_like_header, path_escapes_root, split_fields
from muratune.errors import UserError


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
