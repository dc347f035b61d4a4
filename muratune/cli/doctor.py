"""`muratune doctor`: the cluster readiness check."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from muratune.cli.app import AddressOpt, SetOpt, app


@app.command("doctor")
def doctor_command(
    address: AddressOpt = None,
    data: Annotated[Path | None, typer.Option(help="Dataset root to probe (default: a small synthetic one).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Everything small: 32 px, resnet10t, a few steps.")] = False,
    config: Annotated[
        Path | None, typer.Option(help="Experiment config whose size, policy, backbone and storage are checked.")
    ] = None,
    out: Annotated[Path, typer.Option(help="JSON report to write.")] = Path("doctor.json"),
    set_: SetOpt = None,
) -> None:
    """Check that a Ray cluster is ready for a long search; exit 1 if a check fails."""
    from rich.console import Console

    from muratune.config import load_config
    from muratune.doctor.run import run_doctor

    settings = load_config(config, set_)
    report = run_doctor(address=address, data=data, quick=quick, config=settings, out=out, echo=typer.echo)
    Console(width=160).print(report.table())
    typer.echo(f"report: {out}")
    raise typer.Exit(code=report.exit_code)
