"""The doctor's result: one row per check (status, figure, detail), as a terminal table and as JSON."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from muratune import __version__
from muratune.fileio import write_json

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
STATUSES = (PASS, WARN, FAIL, SKIP)
_STYLES = {PASS: "green", WARN: "yellow", FAIL: "bold red", SKIP: "dim"}


@dataclass
class Check:
    """One readiness check.

    Attributes:
        name: a short stable key (``ray_cluster``, ``training_probe``, ...), the same in the table and the JSON.
        status: ``pass``, ``warn``, ``fail``, or ``skip`` where the check cannot apply (GPU-only on a CPU cluster).
        figure: the measured figure, as a person reads it (``1 node, 2 CPUs, 0 GPUs``, ``412 img/s``).
        detail: what was run, and what to do on a warning or failure.
        seconds: wall time of the check.
        data: the raw numbers behind the figure (JSON only).
    """

    name: str
    status: str
    figure: str
    detail: str = ""
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"check {self.name}: status {self.status!r} is not one of {', '.join(STATUSES)}")


@dataclass
class DoctorReport:
    """Every check of one doctor run, in the order they ran."""

    checks: list[Check] = field(default_factory=list)
    quick: bool = False
    address: str | None = None
    wall_s: float = 0.0
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def add(self, check: Check) -> Check:
        """Record ``check`` and return it."""
        self.checks.append(check)
        return check

    def get(self, name: str) -> Check:
        """The check called ``name``."""
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    @property
    def failed(self) -> list[Check]:
        """The checks that failed."""
        return [c for c in self.checks if c.status == FAIL]

    @property
    def exit_code(self) -> int:
        """0 when nothing failed, 1 when a check failed."""
        return 1 if self.failed else 0

    def counts(self) -> dict[str, int]:
        """How many checks ended in each status."""
        return {status: sum(c.status == status for c in self.checks) for status in STATUSES}

    def to_dict(self) -> dict[str, Any]:
        """The JSON document: run metadata, the counts and every check."""
        return {
            "muratune_version": __version__,
            "started": self.started,
            "address": self.address,
            "quick": self.quick,
            "wall_s": round(self.wall_s, 1),
            "counts": self.counts(),
            "checks": [asdict(c) for c in self.checks],
        }

    def write(self, path: str | os.PathLike) -> None:
        """Write the JSON document atomically."""
        write_json(path, self.to_dict())

    def table(self):
        """A ``rich`` table of the checks."""
        from rich.table import Table

        counts = ", ".join(f"{n} {status}" for status, n in self.counts().items() if n)
        table = Table(title=f"muratune doctor ({'quick, ' if self.quick else ''}{self.wall_s:.0f} s: {counts})")
        table.add_column("check", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("figure")
        table.add_column("detail")
        table.add_column("s", justify="right", no_wrap=True)
        for c in self.checks:
            status = f"[{_STYLES[c.status]}]{c.status}[/]"
            table.add_row(c.name, status, c.figure, c.detail, f"{c.seconds:.0f}")
        return table

    def format_table(self, width: int = 160) -> str:
        """The table rendered as plain text (no colour), ``width`` columns wide."""
        from rich.console import Console

        console = Console(width=width, record=True, no_color=True, force_terminal=False, file=io.StringIO())
        console.print(self.table())
        return console.export_text()


def one_line(error: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300]}" if text else type(error).__name__


@contextmanager
def timed(report: DoctorReport, name: str, echo: Callable[[str], None] = print) -> Iterator[dict]:
    """Run one check's body, recording its Check (or a failure naming the exception) with its wall time.

    The body fills the yielded dict with ``status``, ``figure``, ``detail`` and optionally ``data``. An exception
    other than KeyboardInterrupt becomes a failed check and the doctor goes on to the next one.
    """
    echo(f"doctor: {name} ...")
    slot: dict[str, Any] = {}
    started = time.perf_counter()
    try:
        yield slot
        check = Check(name, slot["status"], slot["figure"], slot.get("detail", ""), data=slot.get("data", {}))
    except Exception as err:  # noqa: BLE001 - a failing check is a result, not a crash of the doctor
        check = Check(name, FAIL, slot.get("figure", "error"), one_line(err), data=slot.get("data", {}))
    check.seconds = time.perf_counter() - started
    report.add(check)
    echo(f"doctor: {name}: {check.status} ({check.figure})")
