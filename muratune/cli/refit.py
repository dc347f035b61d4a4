"""`muratune refit`: the best configurations retrained on folds, and their cv ensemble."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from muratune.cli.app import AddressOpt, app

EpochsOpt = Annotated[
    str | None,
    typer.Option(
        help="Epochs per fold model: N, or 'peak' (each configuration the epoch its search trial peaked at, by "
        "internal-val kappa); default budget.max_epochs."
    ),
]
FullOpt = Annotated[
    bool,
    typer.Option(
        "--full/--no-full",
        help="Also retrain ensemble/cv's configurations once on the whole train split, for their refit epochs: "
        "ensemble/cv-full (on by default: it beat cv and the best single trial on the hard benchmark, docs/refit.md). "
        "On a refit whose ensemble/cv exists, only that (run again to go on).",
    ),
]
DefaultOpt = Annotated[
    str,
    typer.Option(
        "--default",
        help="The experiment's default predictor (ensemble/default.json): 'auto' (the cv ensemble only when it "
        "beats its best configuration alone out of fold, by a bootstrap margin), or cv, cv-full, best-single, "
        "greedy.",
    ),
]
TuneThresholdsOpt = Annotated[
    bool,
    typer.Option(
        help="Tune one threshold per body part on the out-of-fold predictions (on by default, unlike `muratune "
        "ensemble`: they cover the whole official train split)."
    ),
]
CalibrateOpt = Annotated[
    bool,
    typer.Option(
        help="Fit per-body-part temperature scaling of the study probability on the out-of-fold predictions (on "
        "by default, unlike `muratune ensemble`: they cover the whole official train split)."
    ),
]
DropFailedOpt = Annotated[
    bool,
    typer.Option(help="Build ensemble/cv without configurations whose fold models failed (not retried on --resume)."),
]


@app.command("refit")
def refit_command(
    experiment: Annotated[Path, typer.Argument(help="Experiment folder of a finished `muratune search`.")],
    top: Annotated[
        int | None, typer.Option(help="Configurations to refit: best internal-val kappa, ties by AUC (default 3).")
    ] = None,
    folds: Annotated[
        int | None, typer.Option(help="Patient-grouped folds of the official train split (default 5).")
    ] = None,
    size: Annotated[int, typer.Option("--size", min=1, help="Most greedy picks in the out-of-fold selection.")] = 5,
    tta: Annotated[
        bool, typer.Option("--tta", help="Horizontal-flip test-time augmentation (out-of-fold predictions too).")
    ] = False,
    epochs: EpochsOpt = None,
    full: FullOpt = True,
    default: DefaultOpt = "auto",
    tune_thresholds: TuneThresholdsOpt = True,
    calibrate: CalibrateOpt = True,
    drop_failed: DropFailedOpt = False,
    address: AddressOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted refit; finished folds are not rerun.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing refit and EXPERIMENT/ensemble/cv.")] = False,
) -> None:
    """Retrain the best configurations on patient-grouped folds; build ensemble/cv on out-of-fold predictions."""
    from muratune.refit.plan import parse_epochs
    from muratune.refit.run import RefitOptions, run_refit

    options = RefitOptions(
        top=top,
        folds=folds,
        epochs=parse_epochs(epochs),
        resume=resume,
        overwrite=overwrite,
        size=size,
        tune_thresholds=tune_thresholds,
        tta=tta,
        drop_failed=drop_failed,
        calibrate=calibrate,
        full=full,
        default=default,
    )
    result = run_refit(experiment, options, address=address, echo=typer.echo)
    if result.ensemble is None or result.unfinished:  # no ensemble/cv (or cv-full) yet, which scripts must see
        raise typer.Exit(1)
