"""The `muratune` command line: parses arguments and calls one stage function per command."""

from __future__ import annotations

import sys

import click
import typer

from muratune.cli.app import app, run_in_process
from muratune.errors import UserError
from muratune.fileio import DISK_FULL_ERRNOS, disk_full_error

# Importing a command module registers its commands, in this order in --help (the doctor last).
# isort: off
from muratune.cli import data, outputs  # noqa: F401
from muratune.cli import train, search, refit, ensemble, predict, dashboard  # noqa: F401
from muratune.cli import doctor  # noqa: F401
# isort: on

__all__ = ["app", "main", "run_in_process"]


def _parser_exceptions() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """The bad-value, usage-error and abort classes the parser may raise: click's, and typer's own copy (>= 0.20)."""
    values: list[type] = [click.BadParameter]
    errors: list[type] = [click.ClickException]
    try:
        from typer._click.exceptions import BadParameter as VendoredBadParameter  # typer >= 0.20
        from typer._click.exceptions import ClickException as VendoredClickException
    except ImportError:
        pass
    else:
        values.append(VendoredBadParameter)
        errors.append(VendoredClickException)
    return tuple(values), tuple(errors), (click.Abort, typer.Abort, KeyboardInterrupt)


CLICK_BAD_VALUES, CLICK_ERRORS, CLICK_ABORTS = _parser_exceptions()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors print one line on stderr and exit with code 2."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="muratune", standalone_mode=False)
    except UserError as err:
        typer.echo(f"muratune: error: {err}", err=True)
        sys.exit(err.exit_code)
    except CLICK_BAD_VALUES as err:  # type: ignore[misc]  # a value out of range (--size 0): one line naming it
        typer.echo(f"muratune: error: {err.format_message()}", err=True)
        sys.exit(err.exit_code)
    except CLICK_ERRORS as err:  # type: ignore[misc]  # a tuple of exception classes
        err.show()
        sys.exit(err.exit_code)
    except CLICK_ABORTS:  # type: ignore[misc]
        typer.echo("muratune: interrupted", err=True)
        sys.exit(130)
    except OSError as err:  # a full disk outside the atomic writers (which name their target themselves)
        if err.errno not in DISK_FULL_ERRNOS:
            raise
        full = disk_full_error(err.errno or 0, err.filename or "an output")
        typer.echo(f"muratune: error: {full}", err=True)
        sys.exit(full.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
