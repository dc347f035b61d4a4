"""`muratune report`: build the report, then write HTML, Markdown, CSV, JSON and plots atomically."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from muratune.fileio import (
    Input,
    atomic_dir,
    check_output,
    refuse_existing,
    spreadsheet_safe,
    write_bytes,
    write_json,
    write_text,
)
from muratune.layout import (
    LEADERBOARD_CSV,
    METRICS_JSON,
    PLOTS_DIR,
    REPORT_CAMS_DIR,
    REPORT_DIR,
    REPORT_INDEX_HTML,
    REPORT_KIND,
    REPORT_MD,
)
from muratune.lock import experiment_lock, lock_experiment_holding
from muratune.report.bootstrap import DEFAULT_REPLICATES
from muratune.report.build import build_report, metrics_document
from muratune.report.leaderboard import DEFAULT_TOP
from muratune.report.render import render_html, render_markdown


def write_report(
    experiment: str | os.PathLike,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    replicates: int = DEFAULT_REPLICATES,
    seed: int = 0,
    top: int = DEFAULT_TOP,
    echo: Callable[[str], None] = print,
) -> Path:
    """Write ``index.html``, ``report.md``, ``leaderboard.csv``, ``metrics.json`` and ``plots/`` atomically.

    Args:
        experiment: the experiment folder.
        out: report folder (default ``EXPERIMENT/report``).
        overwrite: replace an existing report folder.
        replicates: bootstrap replicates per CI.
        seed: bootstrap seed.
        top: trials shown on the leaderboard.
        echo: where the summary line goes.

    Returns:
        The report folder.
    """
    target = Path(out) if out is not None else Path(experiment) / REPORT_DIR
    check_output(target, [Input(experiment, "the experiment", holds_outputs=True)])
    refuse_existing(target, overwrite, kind=REPORT_KIND)
    with experiment_lock(experiment, "report"), lock_experiment_holding(target, "report"):
        return _write(experiment, target, overwrite, replicates, seed, top, echo)


def _write(
    experiment: str | os.PathLike,
    target: Path,
    overwrite: bool,
    replicates: int,
    seed: int,
    top: int,
    echo: Callable[[str], None],
) -> Path:
    """Build the report and write its folder (under the experiment's lock)."""
    report = build_report(experiment, top=top, replicates=replicates, seed=seed)
    with atomic_dir(target, overwrite=overwrite, kind=REPORT_KIND) as tmp:
        for key, png in report.figures.items():
            write_bytes(tmp / PLOTS_DIR / f"{key}.png", png)
        cams = report.experiment.cams
        for image in cams.images if cams is not None else []:
            (tmp / REPORT_CAMS_DIR).mkdir(exist_ok=True)
            shutil.copy2(image, tmp / REPORT_CAMS_DIR / image.name)
        spreadsheet_safe(report.leaderboard).to_csv(tmp / LEADERBOARD_CSV, index=False)  # opened in spreadsheets
        write_json(tmp / METRICS_JSON, metrics_document(report))
        write_text(tmp / REPORT_MD, render_markdown(report))
        write_text(tmp / REPORT_INDEX_HTML, render_html(report))
    echo(f"report: {target / REPORT_INDEX_HTML}")
    return target
