"""`muratune train`, `search`, `ensemble`, `predict` and `dashboard`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from muratune.cli.app import AddressOpt, ConfigArg, DataOpt, SetOpt, app, load_experiment_config, warn


@app.command("train")
def train_command(
    config: ConfigArg,
    out: Annotated[Path, typer.Option(help="Folder for the checkpoints.")],
    data: DataOpt = None,
    set_: SetOpt = None,
    hp: Annotated[
        list[str] | None,
        typer.Option("--hp", help="Hyperparameter value: --hp lr=0.001 (default: the space's first point)."),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the latest checkpoint in OUT.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing OUT folder.")] = False,
) -> None:
    """Train one configuration outside Ray Tune (for debugging), printing metrics per epoch."""
    import yaml

    from muratune.trainables.standalone import hyperparameters, train_standalone

    experiment_config = load_experiment_config(config, data, set_)
    hparams = hyperparameters(experiment_config, hp or [])
    typer.echo("hyperparameters: " + yaml.safe_dump(hparams, default_flow_style=True).strip())
    train_standalone(experiment_config, hparams, out, resume=resume, overwrite=overwrite, echo=typer.echo)
    typer.echo(f"checkpoints: {out}")


@app.command("search")
def search_command(
    config: ConfigArg,
    data: DataOpt = None,
    name: Annotated[str | None, typer.Option(help="Experiment name (default: the config's name).")] = None,
    address: AddressOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted search with this name.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing experiment with this name.")] = False,
    skip_bad_images: Annotated[
        bool,
        typer.Option("--skip-bad-images", help="Leave unreadable images out (listed in the experiment's cache.json)."),
    ] = False,
    set_: SetOpt = None,
) -> None:
    """Search hyperparameters with Ray Tune (Optuna TPE searcher, ASHA scheduler)."""
    from muratune.search.run import run_search

    if skip_bad_images:
        set_ = [*(set_ or []), "data.skip_bad_images=true"]
    experiment_config = load_experiment_config(config, data, set_, name)
    result = run_search(experiment_config, address=address, resume=resume, overwrite=overwrite, echo=typer.echo)
    if result.unfinished:  # interrupted (a search its time budget ended is finished): as Ctrl-C, for scripts
        raise typer.Exit(130)


@app.command("refit")
def refit_command(
    experiment: Annotated[Path, typer.Argument(help="Experiment folder of a finished `muratune search`.")],
    top: Annotated[
        int | None, typer.Option(help="Configurations to refit: best internal-val kappa, ties by AUC (default 3).")
    ] = None,
    folds: Annotated[
        int | None, typer.Option(help="Patient-grouped folds of the official train split (default 5).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs per fold model (default: budget.max_epochs).")] = None,
    size: Annotated[int, typer.Option("--size", min=1, help="Most greedy picks in the out-of-fold selection.")] = 5,
    tune_thresholds: Annotated[
        bool,
        typer.Option(
            help="Tune one threshold per body part on the out-of-fold predictions (on by default, unlike `muratune "
            "ensemble`: they cover the whole official train split)."
        ),
    ] = True,
    tta: Annotated[
        bool, typer.Option("--tta", help="Horizontal-flip test-time augmentation (out-of-fold predictions too).")
    ] = False,
    address: AddressOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted refit; finished folds are not rerun.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing refit and EXPERIMENT/ensemble/cv.")] = False,
    drop_failed: Annotated[
        bool,
        typer.Option(
            help="Build ensemble/cv without configurations whose fold models failed (not retried on --resume)."
        ),
    ] = False,
) -> None:
    """Retrain the best configurations on patient-grouped folds; build ensemble/cv on out-of-fold predictions."""
    from muratune.refit.run import run_refit

    result = run_refit(
        experiment,
        top=top,
        folds=folds,
        epochs=epochs,
        address=address,
        resume=resume,
        overwrite=overwrite,
        size=size,
        tune_thresholds=tune_thresholds,
        tta=tta,
        drop_failed=drop_failed,
        echo=typer.echo,
    )
    if result.ensemble is None:  # folds unfinished or failed: no ensemble/cv yet, which scripts must see
        raise typer.Exit(1)


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
        bool, typer.Option(help="Fit per-body-part temperature scaling of the study probability on internal val.")
    ] = True,
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


@app.command("predict")
def predict_command(
    ensemble: Annotated[Path, typer.Argument(help="Ensemble folder (EXPERIMENT/ensemble/<strategy>).")],
    input_csv: Annotated[Path, typer.Argument(help="Image paths, one per line, no header (valid_image_paths.csv).")],
    output_csv: Annotated[Path, typer.Argument(help="Output: study path and 0/1 per line, no header.")],
    root: Annotated[
        Path | None, typer.Option(help="Folder the image paths are relative to (default: INPUT_CSV's parent's parent).")
    ] = None,
    probabilities: Annotated[bool, typer.Option("--probabilities", help="Add a probability column.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing OUTPUT_CSV.")] = False,
    skip_bad_images: Annotated[
        bool,
        typer.Option(
            "--skip-bad-images",
            help="Predict around unreadable images (warned about) instead of stopping; studies with none left out.",
        ),
    ] = False,
) -> None:
    """Predict studies in the MURA submission format; an unreadable image stops it unless --skip-bad-images."""
    from muratune.ensemble.predict import predict_csv

    summary = predict_csv(
        ensemble, input_csv, output_csv, root, probabilities, overwrite, warn=warn, skip_bad_images=skip_bad_images
    )
    typer.echo(summary, err=True)


@app.command("dashboard")
def dashboard_command(
    experiment: Annotated[Path, typer.Argument(help="Experiment folder (STORAGE/NAME) holding the Optuna study.")],
    host: Annotated[str, typer.Option(help="Address to bind; loopback unless you mean to expose it.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="HTTP port (0 = any free one).")] = 8080,
) -> None:
    """Open optuna-dashboard on the experiment's Optuna study (needs the `dashboard` extra); Ctrl-C stops it."""
    from muratune.dashboard import serve_dashboard

    serve_dashboard(experiment, host, port, echo=typer.echo)
