"""Tests for the command line's handling of wrong usage: exit code 2, a short message, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run_muratune(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "muratune.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["data", "synth", "--out", "x"], "No such option: --out"),
        (["data", "synth"], "Missing argument 'out'"),
        (["no-such-command"], "No such command 'no-such-command'"),
        (["search", "configs/demo.yaml", "--max-concurrent", "two"], "No such option"),
    ],
)
def test_wrong_usage_exits_2_without_traceback(args: list[str], message: str) -> None:
    result = run_muratune(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert message in result.stderr.strip().splitlines()[-1]


def test_version_exits_0() -> None:
    result = run_muratune("--version")
    assert result.returncode == 0 and result.stdout.startswith("muratune ")
