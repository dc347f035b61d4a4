"""`muratune dashboard`: optuna-dashboard on an experiment's study."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from muratune.cli.app import app


@app.command("dashboard")
def dashboard_command(
    experiment: Annotated[Path, typer.Argument(help="Experiment folder (STORAGE/NAME) holding the Optuna study.")],
    host: Annotated[str, typer.Option(help="Address to bind; loopback unless you mean to expose it.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="HTTP port (0 = any free one).")] = 8080,
) -> None:
    """Open optuna-dashboard on the experiment's Optuna study (needs the `dashboard` extra); Ctrl-C stops it."""
    from muratune.dashboard import serve_dashboard

    serve_dashboard(experiment, host, port, echo=typer.echo)
