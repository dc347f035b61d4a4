"""The `muratune` command line: parses arguments and calls one stage function per command."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import click
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


# --------------------------------------------------------------------------------------------- data
@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Argument(help="Folder to write; MURA-v1.1/ is created inside it.")],
    studies: Annotated[int, typer.Option(help="Number of studies over both splits.")] = 600,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same dataset.")] = 0,
    difficulty: Annotated[
        str, typer.Option(help="Finding strength: easy, medium, hard, or a number in (0, 1] (1 = easiest).")
    ] = "medium",
    size: Annotated[int, typer.Option(help="Approximate long side of the images, in pixels.")] = 512,
    workers: Annotated[int, typer.Option(help="Processes used to draw images (0 = all cores).")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset in OUT.")] = False,
) -> None:
    """Write a synthetic dataset in the exact MURA v1.1 layout, with planted findings and boxes.csv."""
    from muratune.data.synth import generate_dataset

    summary = generate_dataset(
        out, studies=studies, seed=seed, difficulty=difficulty, long_side=size, workers=workers, overwrite=overwrite
    )
    typer.echo(summary)


@data_app.command("check")
def data_check(
    root: Annotated[Path, typer.Argument(help="Folder holding MURA-v1.1/ (or the MURA-v1.1 folder itself).")],
    csv_only: Annotated[bool, typer.Option("--csv-only", help="Check the CSVs only; don't look at images.")] = False,
    deep: Annotated[bool, typer.Option("--deep", help="Open and decode every image.")] = False,
) -> None:
    """Validate a MURA-format dataset and print its per-body-part table of studies and images."""
    from muratune.data.check import check_dataset

    report = check_dataset(root, csv_only=csv_only, deep=deep)
    typer.echo(report.format_table())
    if report.problems:
        for problem in report.problems:
            typer.echo(str(problem), err=True)
        typer.echo(f"{len(report.problems)} problem(s) found in {root}", err=True)
        raise typer.Exit(code=2)
    typer.echo(f"OK: no problems found in {root}")


# --------------------------------------------------------------------------------------------- entry
def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors print one line on stderr and exit with code 2."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="muratune", standalone_mode=False)
    except UserError as err:
        typer.echo(f"muratune: error: {err}", err=True)
        sys.exit(err.exit_code)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except (click.Abort, KeyboardInterrupt):
        typer.echo("muratune: interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
