"""`muratune predict`: study predictions in the MURA submission format."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from muratune.cli.app import app, warn


@app.command("predict")
def predict_command(
    ensemble: Annotated[
        Path,
        typer.Argument(
            help="Ensemble folder (EXPERIMENT/ensemble/<strategy>), or an experiment folder after `muratune refit` "
            "(its default predictor, ensemble/default.json)."
        ),
    ],
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
