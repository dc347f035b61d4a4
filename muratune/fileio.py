"""Atomic file writing: outputs appear complete or not at all."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from muratune.errors import DiskFullError, UserError
from muratune.layout import KIND_SIGNATURES, MARKER

if TYPE_CHECKING:
    import pandas as pd


def _umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_dir_beside(target: Path, suffix: str = ".tmp") -> Path:
    """A fresh hidden folder beside ``target`` (``.name.XXXX.tmp``) with the umask's mode (mkdtemp makes 0700), to
    fill and then rename onto ``target``."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(code: int, target: str | os.PathLike) -> DiskFullError:
    """A full disk (ENOSPC) or quota (EDQUOT, ``code``) while writing ``target``, as one line naming it."""
    reason = "the disk is full" if code == errno.ENOSPC else "the disk quota is used up"
    return DiskFullError(f"{target}: {reason} ({os.strerror(code)}); nothing was written there, free some space")


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` only if the block succeeds.

    Raises:
        UserError: the disk filled up (the temporary file is removed, ``target`` is left as it was).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get normal permissions
        os.replace(tmp_path, target)
    except OSError as err:
        if err.errno in DISK_FULL_ERRNOS:
            raise disk_full_error(err.errno, target) from None
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(target: str | os.PathLike, text: str) -> None:
    """Write text atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    """Write bytes atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def json_safe(value: Any) -> Any:
    """A JSON-serialisable copy: tensors and arrays to lists, numpy scalars to numbers, NaN to null, infinities as
    the strings ``"inf"`` and ``"-inf"``."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist") and callable(value.tolist) and getattr(value, "ndim", False):
        return json_safe(value.tolist())
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def write_json(target: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically, pretty-printed."""
    write_text(target, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


# ------------------------------------------------------------------------------------------------ output folders
# A folder muratune made holds layout.MARKER naming its kind (layout's ``*_KIND``). Folders written before markers
# existed are recognised by the files each kind always writes (layout.KIND_SIGNATURES). Nothing else is replaced.


@dataclass(frozen=True)
class Input:
    """A path a command reads: its outputs may never be it, or hold it; nor lie inside it, unless ``holds_outputs``.

    Attributes:
        path: the input file or folder.
        what: how messages name it, e.g. ``the dataset``.
        holds_outputs: whether stages write inside it by design (an experiment folder).
    """

    path: str | os.PathLike
    what: str
    holds_outputs: bool = False


def write_marker(folder: Path, kind: str) -> None:
    """Mark a folder as made by muratune (see `made_by_muratune`)."""
    from muratune import __version__

    (folder / MARKER).write_text(json.dumps({"kind": kind, "muratune_version": __version__}) + "\n", encoding="utf-8")


def made_by_muratune(folder: Path, kind: str) -> bool:
    """Whether ``folder`` is a ``kind`` output muratune made: it holds the marker, or that kind's signature files."""
    marker = folder / MARKER
    if marker.is_file():
        try:
            return json.loads(marker.read_text(encoding="utf-8")).get("kind") == kind
        except (OSError, ValueError, AttributeError):
            return False
    signature = KIND_SIGNATURES.get(kind, ())
    return bool(signature) and all((folder / name).is_file() for name in signature)


def check_output(
    target: str | os.PathLike, inputs: Sequence[Input] = (), is_dir: bool = True, flag: str = "--out"
) -> Path:
    """Refuse, before any work, an output path that would touch an input or a folder that is not the command's.

    Refused: a filesystem root or the home folder; an output that is an input, holds one, or lies inside one (unless
    the input holds outputs by design); a folder where a file is written, or a file where a folder is.

    Returns:
        The resolved output path.

    Raises:
        UserError: one line naming the option, the path and the reason.
    """
    out = resolved_path(target, flag)
    if out == Path(out.anchor):
        raise UserError(f"{flag} {target}: refusing to write into a filesystem root")
    if out == Path.home().resolve():
        raise UserError(f"{flag} {target}: refusing to write into the home folder")
    for item in inputs:
        source = resolved_path(item.path, item.what)
        if out == source or source.is_relative_to(out):
            raise UserError(f"{flag} {target}: is or holds {item.what} ({source}); choose another output")
        if out.is_relative_to(source) and not item.holds_outputs:
            raise UserError(f"{flag} {target}: lies inside {item.what} ({source}); choose another output")
    if is_dir and out.exists() and not out.is_dir():
        raise UserError(f"{flag} {target}: is a file; a folder is written here")
    if not is_dir and out.is_dir():
        raise UserError(f"{flag} {target}: is a folder; a file is written here")
    return out


def resolved_path(path: str | os.PathLike, what: str) -> Path:
    """``path`` made absolute with its links followed.

    Raises:
        UserError: a symbolic link loop (one line naming ``what`` and the path).
    """
    try:
        return Path(path).expanduser().resolve()
    except (RuntimeError, OSError) as err:  # Python < 3.13 raises RuntimeError on a loop, later ones OSError
        raise UserError(f"{what} {path}: cannot be followed ({err}); a symbolic link loop?") from None


def refuse_foreign(target: Path, kind: str) -> None:
    """Refuse to replace an existing folder that muratune did not make as a ``kind`` output."""
    if target.exists() and not (target.is_dir() and made_by_muratune(target, kind)):
        raise UserError(
            f"{target}: exists and is not a muratune {kind} folder (no {MARKER} marker); refusing to replace it"
        )


@contextmanager
def atomic_dir(target: str | os.PathLike, overwrite: bool = False, kind: str = "output") -> Iterator[Path]:
    """Yield a temporary directory beside ``target`` and move it into place, marked, when the block succeeds.

    Refuses to replace an existing ``target`` unless ``overwrite`` is set and muratune made it as a ``kind``
    folder. The replaced folder is renamed aside under a fresh name (never a name that existed) and deleted only
    once the new one is in place. A full disk is a one-line UserError naming ``target``; nothing partial is kept.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise UserError(f"{target}: already exists; pass --overwrite to replace it")
    refuse_foreign(target, kind)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(target)
    try:
        yield tmp
        write_marker(tmp, kind)
        old = move_aside(target)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except DiskFullError:  # a file written inside the folder: name the output, not its temporary path
        raise disk_full_error(errno.ENOSPC, target) from None
    except OSError as err:
        if err.errno in DISK_FULL_ERRNOS:
            raise disk_full_error(err.errno, target) from None
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def move_aside(target: Path) -> Path | None:
    """Rename an existing ``target`` to a fresh hidden sibling (``.name.replaced-XXXX``); return it (None if absent)."""
    if not target.exists():
        return None
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.replaced-", dir=target.parent))
    os.replace(target, aside)  # over the empty folder mkdtemp made
    return aside


@dataclass
class Replacement:
    """An output folder a run replaces (see `replacing_folder`).

    Attributes:
        target: the output folder.
        kind: its kind (layout's ``*_KIND``).
        aside: where `move_old_aside` moved the folder being replaced (None when nothing was replaced).
        finished: whether the new output is complete; the block sets False when its run stopped unfinished
            (e.g. trials a ``--resume`` continues).
    """

    target: Path
    kind: str
    aside: Path | None = None
    finished: bool = True

    def move_old_aside(self) -> Path | None:
        """Rename an existing ``target`` aside (`move_aside`), once the caller has refused what it may not replace."""
        self.aside = move_aside(self.target)
        return self.aside


@contextmanager
def replacing_folder(
    target: str | os.PathLike, kind: str, echo: Callable[[str], None] = print
) -> Iterator[Replacement]:
    """Run a block that writes ``target``, keeping a replaced ``kind`` folder aside until the block has finished.

    The block moves the old folder aside (`Replacement.move_old_aside`) when its checks have passed. When the block
    succeeds with ``finished`` set, the replaced folder is deleted, and with it every ``kind`` folder earlier
    interrupted runs left aside at ``target`` (`replaced_folders`): a ``--resume`` finishing an interrupted
    ``--overwrite`` removes what that one replaced. When the block fails, is interrupted or ends unfinished, the old
    folder stays aside and a line says how to restore it.
    """
    replacement = Replacement(Path(target), kind)
    try:
        yield replacement
    except BaseException:
        replacement.finished = False
        finish_replacing(replacement, echo)
        raise
    finish_replacing(replacement, echo)


def finish_replacing(replacement: Replacement, echo: Callable[[str], None] = print) -> None:
    """Delete what a finished run replaced; until it has finished, say where the replaced folder is kept."""
    target, aside, kind = replacement.target, replacement.aside, replacement.kind
    if not replacement.finished:
        if aside is not None:
            echo(f"the replaced {kind} is kept at {aside} until this one finishes; `mv {aside} {target}` restores it")
        return
    for old in sorted({*replaced_folders(target, kind), *([aside] if aside is not None else [])}):
        shutil.rmtree(old, ignore_errors=True)
        if old != aside:
            echo(f"removed {old}: the {kind} it kept was replaced by this one, now finished")


def replaced_folders(target: Path, kind: str) -> list[Path]:
    """The ``kind`` folders `move_aside` left beside ``target`` (oldest name first): what earlier runs replaced.

    Only folders muratune made as ``kind`` count; anything else with a look-alike name is never returned.
    """
    found = target.parent.glob(f".{target.name}.replaced-*")
    return sorted(p for p in found if p.is_dir() and made_by_muratune(p, kind))


def refuse_existing(path: str | os.PathLike, overwrite: bool, kind: str | None = None) -> None:
    """Raise a UserError if ``path`` exists and ``overwrite`` is not set (or, with ``kind``, if it is not ours)."""
    if Path(path).exists() and not overwrite:
        raise UserError(f"{path}: already exists; pass --overwrite to replace it")
    if kind is not None:
        refuse_foreign(Path(path), kind)


# ------------------------------------------------------------------------------------------------ CSV for people
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(value: Any) -> Any:
    """A text cell a spreadsheet will not run: text starting with ``= + - @``, tab or CR gets a leading ``'``
    (OWASP's advice). Numbers, and text that is a plain number (``-0.5``, ``-1e-4``), stay as they are."""
    if not isinstance(value, str) or not value.startswith(FORMULA_STARTS):
        return value
    try:
        float(value)
    except ValueError:
        return "'" + value
    return value


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text cells are `spreadsheet_cell`s, for a CSV people open (a leaderboard)."""
    import pandas as pd

    safe = frame.copy()
    safe.columns = [spreadsheet_cell(column) for column in safe.columns]
    for column in safe.columns:
        if safe[column].dtype == object or pd.api.types.is_string_dtype(safe[column].dtype):
            safe[column] = safe[column].map(spreadsheet_cell)
    return safe
