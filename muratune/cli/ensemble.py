"""`muratune ensemble`: ensembles of the search's best checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from muratune.cli.app import app


@app.command("ensemble")
def ensemble_command(
    experiment: Annotated[Path, typer.Argument(help="Experiment folder written by `muratune search`.")],
    size: Annotated[int, typer.Option("--size", min=1, help="Most members per ensemble (greedy picks, top-k K).")] = 5,
    strategy: Annotated[
        list[str] | None,
        typer.Option(help="best-single, top-k-mean, greedy or greedy-per-body-part (repeatable; default: all)."),
    ] = None,
    tune_thresholds: Annotated[
        bool,
        typer.Option(
            "--tune-thresholds",
            "--per-body-part",
            help="Tune one decision threshold per body part on internal val (off by default, unlike `muratune refit`: "
            "internal val is small, so tuned thresholds overfit it).",
        ),
    ] = False,
    tta: Annotated[bool, typer.Option("--tta", help="Horizontal-flip test-time augmentation.")] = False,
    rank_by: Annotated[str, typer.Option(help="top-k-mean ranking on internal val: kappa or loss.")] = "kappa",
    overwrite: Annotated[bool, typer.Option(help="Replace existing EXPERIMENT/ensemble/<strategy> folders.")] = False,
    calibrate: Annotated[
        bool,
        typer.Option(
            help="Fit per-body-part temperature scaling of the study probability on internal val (off by default: "
            "docs/calibration.md)."
        ),
    ] = False,
) -> None:
    """Select ensembles of the best checkpoints on internal val, save them, and score them on the test split."""
    from muratune.ensemble.build import build_ensembles

    build_ensembles(
        experiment,
        size=size,
        strategies=strategy,
        tune_thresholds=tune_thresholds,
        tta=tta,
        overwrite=overwrite,
        rank_by=rank_by,
        echo=typer.echo,
        calibrate=calibrate,
    )
