"""The one body-part parser: MURA's ``XR_<PART>`` names from user text, from paths and from file names."""

from __future__ import annotations

import os
import re
from pathlib import PurePosixPath

from muratune.constants import BODY_PARTS, short_part

_PART_SEGMENT_RE = re.compile(r"^XR_[A-Z]+$")


def normalise_body_part(value: str) -> str:
    """``XR_WRIST`` from ``wrist``, ``Wrist``, ``XR_WRIST`` or ``xr_wrist``.

    Raises:
        ValueError: not one of the seven MURA body parts (the message lists them).
    """
    text = str(value).strip().upper()
    part = text if text.startswith("XR_") else f"XR_{text}"
    if part not in BODY_PARTS:
        names = ", ".join(short_part(p) for p in BODY_PARTS)
        raise ValueError(f"unknown body part {value!r}; expected one of {names}")
    return part


def body_part_in_path(path: str | os.PathLike) -> str | None:
    """The ``XR_<PART>`` folder of a MURA path (the last one; None when there is none). It may be unknown."""
    for part in reversed(PurePosixPath(str(path).replace("\\", "/")).parts):
        if _PART_SEGMENT_RE.match(part):
            return part
    return None


def body_part_in_name(filename: str) -> str | None:
    """A file's body part: its path's ``XR_<PART>`` folder, else a known part in its name (``XR_ELBOW_1.png``)."""
    in_path = body_part_in_path(filename)
    if in_path is not None:
        return in_path
    name = PurePosixPath(filename.replace("\\", "/")).name.upper()
    return next((part for part in BODY_PARTS if part in name), None)
