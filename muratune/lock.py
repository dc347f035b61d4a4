"""One writer per experiment: an exclusive lock beside the experiment folder that names its holder and dies with it."""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

from muratune.errors import UserError
from muratune.layout import RESOLVED_CONFIG

LOCK_SUFFIX = ".lock"
_held: dict[Path, int] = {}  # lock files this process holds, with how many nested blocks hold each


def lock_path(exp_dir: Path) -> Path:
    """The experiment's lock file: ``.<name>.lock`` beside the folder, so it outlives the folder being replaced."""
    exp_dir = Path(exp_dir).expanduser().resolve()
    return exp_dir.parent / f".{exp_dir.name}{LOCK_SUFFIX}"


@contextmanager
def experiment_lock(exp_dir: str | os.PathLike, command: str) -> Iterator[None]:
    """Hold the experiment's exclusive lock for the block; refuse, with the holder's PID, if another process has it.

    The lock is an ``flock`` on the lock file: the kernel releases it when its holder exits, however it exits, so
    a lock left by a dead process never blocks. Nested blocks in one process share the lock. Where the folder the
    lock would lie in does not exist, there is nothing to protect and nothing is created.

    Raises:
        UserError: another process holds the lock (one line naming its PID and command).
    """
    path = lock_path(Path(exp_dir))
    if path in _held:
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    if not path.parent.is_dir():  # nothing there to protect yet (a first search creates it), and no folder is made
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _acquire(fd, path, Path(exp_dir), command)
        _held[path] = 1
        try:
            yield
        finally:
            del _held[path]
    finally:
        os.close(fd)  # closing the only descriptor releases the flock


def _acquire(fd: int, path: Path, exp_dir: Path, command: str) -> None:
    """Take the flock without waiting and record this process as the holder."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UserError(
            f"{exp_dir}: {_holder(path)} is writing this experiment; wait for it to finish (lock {path})"
        ) from None
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": command}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)


def _holder(path: Path) -> str:
    """How the lock's holder is named in the refusal: ``muratune refit (PID 123 on host)``."""
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        return f"muratune {holder['command']} (PID {int(holder['pid'])} on {holder['host']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another muratune process (PID unknown)"


def experiment_holding(path: str | os.PathLike) -> Path | None:
    """The experiment folder ``path`` is or lies in (the nearest folder up holding ``resolved_config.yaml``)."""
    path = Path(path).expanduser().resolve()
    return next((folder for folder in (path, *path.parents) if (folder / RESOLVED_CONFIG).is_file()), None)


def lock_experiment_holding(path: str | os.PathLike, command: str) -> AbstractContextManager[None]:
    """`experiment_lock` on the experiment ``path`` writes into; no lock for an output outside any experiment."""
    exp_dir = experiment_holding(path)
    return nullcontext() if exp_dir is None else experiment_lock(exp_dir, command)
