"""The demo: every stage as the real muratune command, in order, on synthetic data and the local CPU."""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable
from pathlib import Path

from muratune.config import shipped_config_path
from muratune.errors import UserError
from muratune.fileio import write_text

DEMO_CONFIG = "demo.yaml"
# The demo's size. Trials train at most DEMO_EPOCHS, half the demo config's budget.max_epochs, and ASHA stops the
# weaker ones after DEMO_GRACE_PERIOD, so that a newcomer's first run takes well under ten minutes on two slow cores.
DEMO_STUDIES = 600
DEMO_TRIALS = 8
DEMO_EPOCHS = 4
DEMO_GRACE_PERIOD = 2


def demo_config_text() -> str:
    """The shipped demo config (``configs/demo.yaml`` in a checkout)."""
    return shipped_config_path("demo").read_text(encoding="utf-8")


def demo_commands(out: Path, studies: int, trials: int, overwrite: bool, epochs: int) -> list[list[str]]:
    """The demo's muratune commands, in order."""
    data = out / "data"
    dataset = data / "MURA-v1.1"
    exp = out / "runs" / "demo"
    force = ["--overwrite"] if overwrite else []
    budget = ["--set", f"budget.max_epochs={epochs}", "--set", f"budget.grace_period={min(epochs, DEMO_GRACE_PERIOD)}"]
    # Two trials at once (the demo config), each with half of this machine's cores: 1 each on a 2-core machine.
    cores = ["--set", f"resources.cpus_per_trial={max(1, usable_cores() // 2)}"]
    return [
        ["data", "synth", str(data), "--studies", str(studies), "--seed", "0", "--difficulty", "easy", *force],
        ["data", "check", str(data)],
        ["data", "cache", str(data), "--size", "64"],
        [
            "search",
            str(out / DEMO_CONFIG),
            "--data",
            str(data),
            "--set",
            f"storage={out / 'runs'}",
            "--set",
            f"budget.num_samples={trials}",
            *cores,
            *budget,
            *force,
        ],
        ["ensemble", str(exp), *force],
        [
            "cam",
            str(exp / "ensemble" / "greedy"),
            "--csv",
            str(dataset / "valid_image_paths.csv"),
            "--root",
            str(data),
            "--abnormal-only",
            "--out",
            str(exp / "cams"),
            "--score",
            str(dataset / "boxes.csv"),
            *force,
        ],
        ["report", str(exp), *force],
    ]


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def run_demo(
    out: Path,
    run: Callable[[list[str]], None],
    studies: int = DEMO_STUDIES,
    trials: int = DEMO_TRIALS,
    overwrite: bool = False,
    epochs: int = DEMO_EPOCHS,
    echo: Callable[[str], None] = print,
) -> Path:
    """Run the whole pipeline and return the report's ``index.html``.

    Args:
        out: folder for the data, the experiment and the report.
        run: runs one muratune command given its arguments (the CLI passes its in-process runner).
        studies: synthetic studies to generate.
        trials: search trials (at least 8 keeps ASHA and TPE meaningful).
        overwrite: replace an earlier demo in ``out``.
        epochs: maximum epochs per trial; ASHA's grace period is the smaller of this and ``DEMO_GRACE_PERIOD``.
        echo: where the commands and the summary are printed.
    """
    out = out.resolve()
    if (out / "runs").exists() and not overwrite:
        raise UserError(f"{out}: a demo already ran here; pass --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / DEMO_CONFIG, demo_config_text())
    started = time.perf_counter()
    for args in demo_commands(out, studies, trials, overwrite, epochs):
        echo(f"\n$ muratune {shlex.join(args)}")
        step = time.perf_counter()
        run(args)
        echo(f"  ({time.perf_counter() - step:.0f} s)")
    report = out / "runs" / "demo" / "report" / "index.html"
    echo("\n" + summary_table(report.parent / "leaderboard.csv"))
    echo(f"\ndemo finished in {(time.perf_counter() - started) / 60:.1f} min")
    echo(f"report: {report}")
    return report


def summary_table(leaderboard_csv: Path, rows: int = 8) -> str:
    """A short terminal table of the leaderboard: held-out test kappa with its 95% CI, AUC and internal-val kappa."""
    import pandas as pd

    board = pd.read_csv(leaderboard_csv)
    board = board[board["kind"].isin(["ensemble", "trial"])].head(rows)
    lines = [f"{'model':<24} {'kind':<9} {'test kappa [95% CI]':<22} {'test AUC':>8} {'val kappa':>9}"]
    for row in board.itertuples():
        ci = f"{row.kappa_overall:.3f} [{row.kappa_overall_low:.2f}, {row.kappa_overall_high:.2f}]"
        lines.append(f"{str(row.name)[:24]:<24} {row.kind:<9} {ci:<22} {row.auc:>8.3f} {row.val_kappa:>9.3f}")
    return "\n".join(lines)
