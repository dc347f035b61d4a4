"""One writer per experiment: the lock refuses a second writer by its PID and never outlives its holder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from muratune.errors import UserError
from muratune.lock import experiment_lock, lock_path

HOLD = """
import sys
from muratune.lock import experiment_lock
with experiment_lock(sys.argv[1], "refit"):
    print("held", flush=True)
    sys.stdin.read()
"""


def start_holder(exp: Path) -> subprocess.Popen:
    """A process that holds the experiment's lock until its stdin closes; returns once it holds it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(exp)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    exp = tmp_path / "exp"
    holder = start_holder(exp)
    try:
        with pytest.raises(UserError) as refused:
            with experiment_lock(exp, "ensemble"):
                pytest.fail("took a lock another process holds")
        message = str(refused.value)
        assert f"PID {holder.pid}" in message and "muratune refit" in message and "\n" not in message
    finally:
        holder.communicate("")
    with experiment_lock(exp, "ensemble"):  # released when its holder finished
        pass


def test_a_lock_left_by_a_killed_process_never_blocks(tmp_path):
    exp = tmp_path / "exp"
    holder = start_holder(exp)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert lock_path(exp).is_file()  # the file stays; the kernel dropped the lock with its holder
    with experiment_lock(exp, "report"):
        assert str(os.getpid()) in lock_path(exp).read_text(encoding="utf-8")


def test_nested_blocks_in_one_process_share_the_lock(tmp_path):
    exp = tmp_path / "exp"
    with experiment_lock(exp, "refit"):
        with experiment_lock(exp, "ensemble"):
            pass
        holder = subprocess.run(
            [sys.executable, "-c", HOLD, str(exp)], input="", capture_output=True, text=True, check=False
        )
        assert holder.returncode != 0 and f"PID {os.getpid()}" in holder.stderr  # still held by the outer block
    assert not exp.exists()  # the lock lies beside the experiment and creates no folder for it


def test_a_lock_where_no_folder_exists_creates_nothing(tmp_path):
    exp = tmp_path / "no" / "such" / "exp"
    with experiment_lock(exp, "report"):
        pass
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("command", [["ensemble"], ["report"]])
def test_a_stage_writing_into_a_locked_experiment_is_refused_in_one_line(
    command: list[str], tiny_experiment: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    import shutil

    from muratune.layout import ENSEMBLE_DIR, REFIT_DIR
    from tests.helpers.cli import assert_one_line_error, run
    from tests.helpers.files import tree_digest

    exp = tmp_path / "tiny"
    shutil.copytree(tiny_experiment, exp, ignore=shutil.ignore_patterns(REFIT_DIR, ENSEMBLE_DIR))
    before = tree_digest(exp)
    holder = start_holder(exp)
    try:
        code, _, err = run([*command, str(exp)], capsys)
    finally:
        holder.communicate("")
    assert code == 2
    assert_one_line_error(err, [str(exp), f"PID {holder.pid}", "is writing this experiment"])
    assert tree_digest(exp) == before  # refused before anything was written
