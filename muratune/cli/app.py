"""The typer application and the option types its command modules share."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from muratune import __version__
from muratune.errors import UserError

app = typer.Typer(
    name="muratune",
    help="Hyperparameter search for abnormality detection in musculoskeletal radiographs (MURA).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Dataset tools: synthesise, check, cache, preview.", no_args_is_help=True)
app.add_typer(data_app, name="data")

ConfigArg = Annotated[Path, typer.Argument(help="Experiment config: a YAML file, or a shipped config's name (demo).")]
DataOpt = Annotated[Path | None, typer.Option("--data", help="Dataset root; overrides data.root.")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override a config field: --set budget.num_samples=4 (repeatable).")
]
AddressOpt = Annotated[
    str | None, typer.Option(help="Ray cluster address, e.g. 'auto' (default: RAY_ADDRESS or local Ray).")
]
ReplicatesOpt = Annotated[
    int, typer.Option(min=1, help="Bootstrap replicates per 95% CI (studies resampled per body part).")
]
SeedOpt = Annotated[int, typer.Option(min=0, help="Bootstrap random seed.")]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"muratune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """muratune: Ray Tune + Optuna + ASHA search over MURA-format radiograph data."""


def warn(message: str) -> None:
    """Print a warning line on stderr."""
    typer.echo(f"muratune: warning: {message}", err=True)


def load_experiment_config(config: Path, data: Path | None, overrides: list[str] | None, name: str | None = None):
    """A command's experiment config: the YAML (or a shipped name), ``--set`` overrides, ``--data`` and ``--name``."""
    from muratune.config import load_config

    values = {}
    if data is not None:
        values["data.root"] = str(data)
    if name is not None:
        values["name"] = name
    return load_config(config, overrides, values)


def run_in_process(args: list[str]) -> None:
    """Run one muratune command in this process (the demo's runner), raising on a non-zero exit."""
    command = typer.main.get_command(app)
    code = command.main(args=args, prog_name="muratune", standalone_mode=False)
    if isinstance(code, int) and code != 0:
        raise UserError(f"`muratune {shlex.join(args)}` exited with code {code}")
