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


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["score", "p.csv", "l.csv", "--seed", "-1"], "--seed"),
        (["score", "p.csv", "l.csv", "--replicates", "0"], "--replicates"),
        (["data", "cache", ".", "--size", "-8"], "--size"),
        (["data", "cache", ".", "--size", "0"], "--size"),
        (["data", "synth", "x", "--studies", "0"], "--studies"),
        (["data", "synth", "x", "--seed", "-3"], "--seed"),
        (["data", "synth", "x", "--valid-share", "-0.1"], "--valid-share"),
        (["ensemble", "x", "--size", "0"], "--size"),
        (["report", "x", "--top", "0"], "--top"),
        (["serve", "x", "--port", "0"], "--port"),
        (["serve", "x", "--max-pixels", "0"], "--max-pixels"),
        (["serve", "x", "--body-idle-s", "0"], "--body-idle-s"),
        (["serve", "x", "--body-min-rate-kb", "-1"], "--body-min-rate-kb"),
        (["serve", "x", "--max-buffered-mb", "0"], "--max-buffered-mb"),
    ],
)
def test_out_of_range_values_are_one_line_naming_the_option(args: list[str], option: str, tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "muratune.cli", *args], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("muratune: error: ") and f"'{option}'" in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_serve_options_default_to_the_servers_own_limits_in_its_units() -> None:
    import typer.main

    from muratune.cli.app import app
    from muratune.serve.app import ServeLimits

    serve_command = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    defaults = {param.name: param.default for param in serve_command.params}
    names = ["max_request_mb", "max_files", "max_pixels", "max_request_pixels"]
    names += ["body_idle_s", "body_min_rate_kb", "max_buffered_mb"]
    assert ServeLimits.from_options(**{name: defaults[name] for name in names}) == ServeLimits()
    given = ServeLimits.from_options(
        max_request_mb=2,
        max_files=3,
        max_pixels=1000,
        max_request_pixels=2000,
        body_idle_s=1.5,
        body_min_rate_kb=8,
        max_buffered_mb=64,
    )
    assert given == ServeLimits(
        max_request_bytes=2 * 1024 * 1024,
        max_files=3,
        max_pixels=1000,
        max_request_pixels=2000,
        body_idle_s=1.5,
        body_min_rate=8 * 1024,
        max_buffered_bytes=64 * 1024 * 1024,
    )


@pytest.mark.parametrize("option", ["--body-idle-s", "--body-min-rate-kb", "--max-buffered-mb", "--max-request-mb"])
@pytest.mark.parametrize("value", ["inf", "nan"])
def test_a_serve_limit_that_is_not_a_finite_number_is_one_line(option: str, value: str, tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "muratune.cli", "serve", str(tmp_path), option, value],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("muratune: error: ") and option in lines[0], result.stderr
    if value == "inf":  # nan fails the options' own lower bounds first
        assert lines[0] == f"muratune: error: {option} inf: must be a finite number"


def test_synth_into_a_file_is_one_line_and_leaves_the_file(tmp_path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("keep me\n")
    result = run_muratune("data", "synth", str(target), "--studies", "4")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"muratune: error: OUT {target}: is a file; a folder is written here"
    assert target.read_text() == "keep me\n"
