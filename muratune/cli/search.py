"""`muratune search`: the hyperparameter search."""

from __future__ import annotations

from typing import Annotated

import typer

from muratune.cli.app import AddressOpt, ConfigArg, DataOpt, SetOpt, app, load_experiment_config


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
