"""`muratune train`: one configuration outside Ray Tune (for debugging)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from muratune.cli.app import ConfigArg, DataOpt, SetOpt, app, load_experiment_config


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
