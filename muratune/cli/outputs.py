"""`muratune cam`, `report`, `score`, `serve` and `demo`: the commands that turn an experiment into outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from muratune.cli.app import AddressOpt, ReplicatesOpt, SeedOpt, app, run_in_process, warn
from muratune.demo import DEMO_EPOCHS, DEMO_GRACE_PERIOD, DEMO_STUDIES, DEMO_TRIALS
from muratune.errors import UserError

PredictorArg = Annotated[
    Path,
    typer.Argument(
        help="Ensemble folder (EXPERIMENT/ensemble/<strategy>), a checkpoint, or an experiment folder after "
        "`muratune refit` (its default predictor, ensemble/default.json)."
    ),
]

CamShiftsOpt = Annotated[
    int, typer.Option(min=1, max=8, help="CAM shift averaging per axis (1 = off: about half the CPU time per view).")
]
MaxPixelsOpt = Annotated[
    int, typer.Option(min=1, help="Largest image in pixels, read from its header before decoding (413 above).")
]
MaxRequestPixelsOpt = Annotated[
    int, typer.Option(min=1, help="Most pixels of one request's views together (413 above).")
]
BodyIdleOpt = Annotated[
    float, typer.Option(min=0.1, help="Seconds an upload may fall silent before it is cut off (408).")
]
BodyMinRateOpt = Annotated[
    float,
    typer.Option(min=0, help="Slowest average upload, KB/s, once --body-idle-s has passed (408 below; 0: no floor)."),
]
MaxBufferedOpt = Annotated[
    float | None,
    typer.Option(
        min=0.01,
        help="MB of uploads the server holds at once before 503 (default: 8 x --max-request-mb; at least that).",
    ),
]


@app.command("cam")
def cam_command(
    ensemble: PredictorArg,
    out: Annotated[Path, typer.Option(help="Folder to write (PNG overlays, JSON, index.html).")],
    study: Annotated[Path | None, typer.Option(help="A study folder to explain.")] = None,
    csv: Annotated[Path | None, typer.Option(help="An image list to explain (valid_image_paths.csv style).")] = None,
    root: Annotated[
        Path | None, typer.Option(help="Folder image paths are relative to (default for --csv: its parent's parent).")
    ] = None,
    abnormal_only: Annotated[
        bool, typer.Option("--abnormal-only", help="Only studies labelled abnormal (studyN_positive folders).")
    ] = False,
    layer: Annotated[
        str, typer.Option(help="CAM layer: auto, a timm feature-stage index (2, -1) or a module name (layer3).")
    ] = "auto",
    method: Annotated[
        str,
        typer.Option(
            help="auto (classic CAM on fine final maps, else LayerCAM), cam, gradcam, gradcam++, layercam, hirescam."
        ),
    ] = "auto",
    shifts: Annotated[
        int,
        typer.Option(
            help="Average maps over NxN input shifts of 1/N map cell (1 = off); sharper peaks on coarse maps."
        ),
    ] = 2,
    threshold: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Box: largest region above this fraction of the map's max.")
    ] = 0.2,
    score: Annotated[
        Path | None, typer.Option("--score", help="boxes.csv of true findings: print and save score.json.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing OUT folder.")] = False,
) -> None:
    """Export class activation maps of an ensemble: overlays, boxes, an offline index.html, optional score."""
    from muratune.cam.export import CamOptions, ImageSelection, export_cams

    selection = ImageSelection(study=study, csv=csv, root=root, abnormal_only=abnormal_only)
    options = CamOptions(layer=layer, method=method, shifts=shifts, threshold=threshold)
    summary = export_cams(ensemble, out, selection, options, score_boxes=score, overwrite=overwrite, warn=warn)
    for line in summary.lines():
        typer.echo(line)


@app.command("report")
def report_command(
    experiment: Annotated[Path, typer.Argument(help="Experiment folder written by `muratune search`.")],
    out: Annotated[Path | None, typer.Option(help="Report folder (default: EXPERIMENT/report).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing report folder.")] = False,
    replicates: ReplicatesOpt = 1000,
    seed: SeedOpt = 0,
    top: Annotated[int, typer.Option(min=1, help="Trials on the leaderboard (best internal-val kappa first).")] = 10,
) -> None:
    """Write the leaderboard report: index.html, report.md, leaderboard.csv, metrics.json and plots/."""
    from muratune.report.write import write_report

    write_report(experiment, out, overwrite=overwrite, replicates=replicates, seed=seed, top=top, echo=typer.echo)


@app.command("score")
def score_command(
    predictions: Annotated[Path, typer.Argument(help="MURA predictions: study path, 0/1[, probability]; no header.")],
    labeled_studies: Annotated[Path, typer.Argument(help="Labelled studies (valid_labeled_studies.csv).")],
    replicates: ReplicatesOpt = 1000,
    seed: SeedOpt = 0,
) -> None:
    """Score MURA-format predictions per body part: kappa with bootstrap 95% CIs (and AUC given probabilities)."""
    from muratune.report.score import format_score, score_file

    typer.echo(format_score(score_file(predictions, labeled_studies, replicates=replicates, seed=seed)))


@app.command("serve")
def serve_command(
    ensemble: PredictorArg,
    host: Annotated[str, typer.Option(help="Address to bind; loopback unless you mean to expose it.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP port.")] = 8000,
    replicas: Annotated[int, typer.Option(min=1, help="Model replicas (each holds the whole ensemble).")] = 1,
    cpus_per_replica: Annotated[float, typer.Option(min=0, help="CPUs reserved per model replica.")] = 1.0,
    gpus_per_replica: Annotated[float, typer.Option(min=0, help="GPUs per model replica (fractions share one).")] = 0.0,
    max_request_mb: Annotated[float, typer.Option(min=0.01, help="Largest request body; larger ones get 413.")] = 32.0,
    max_files: Annotated[int, typer.Option(min=1, help="Most views per study.")] = 12,
    address: AddressOpt = None,
    cam_shifts: CamShiftsOpt = 2,
    max_pixels: MaxPixelsOpt = 40_000_000,
    max_request_pixels: MaxRequestPixelsOpt = 80_000_000,
    body_idle_s: BodyIdleOpt = 10.0,
    body_min_rate_kb: BodyMinRateOpt = 32.0,
    max_buffered_mb: MaxBufferedOpt = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(help="Another Host name clients may use (repeatable); the bound host and loopback always are."),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="MURATUNE_API_KEY",
            show_envvar=True,
            help="API key; required to bind beyond loopback. Prefer setting MURATUNE_API_KEY: a key given on the "
            "command line is visible to other users in ps.",
        ),
    ] = None,
) -> None:
    """Serve an ensemble over HTTP with Ray Serve: POST /predict and /cam, GET /health and /info, a page at /."""
    from PIL import Image

    from muratune.serve.app import ServeLimits
    from muratune.serve.deploy import ServeOptions, serve_until_interrupted

    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        raise UserError(f"--max-pixels {max_pixels}: above Pillow's bomb limit ({Image.MAX_IMAGE_PIXELS})")
    limits = ServeLimits.from_options(
        max_request_mb=max_request_mb,
        max_files=max_files,
        max_pixels=max_pixels,
        max_request_pixels=max_request_pixels,
        body_idle_s=body_idle_s,
        body_min_rate_kb=body_min_rate_kb,
        max_buffered_mb=max_buffered_mb,
    )
    options = ServeOptions(
        host=host,
        port=port,
        replicas=replicas,
        cpus_per_replica=cpus_per_replica,
        gpus_per_replica=gpus_per_replica,
        limits=limits,
        cam_shifts=cam_shifts,
        allowed_hosts=tuple(allowed_host or ()),
        api_key=api_key or None,
    )
    serve_until_interrupted(ensemble, options, address, echo=typer.echo)


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option(help="Folder for the data, experiment and report.")] = Path("demo-out"),
    studies: Annotated[int, typer.Option(min=1, help="Synthetic studies to generate.")] = DEMO_STUDIES,
    trials: Annotated[int, typer.Option(min=1, help="Search trials.")] = DEMO_TRIALS,
    epochs: Annotated[
        int, typer.Option(min=1, help=f"Maximum epochs per trial (ASHA may stop a trial after {DEMO_GRACE_PERIOD}).")
    ] = DEMO_EPOCHS,
    open_report: Annotated[bool, typer.Option("--open", help="Open the report in a browser at the end.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier demo in OUT.")] = False,
) -> None:
    """Run the whole pipeline on synthetic data on this machine: data, cache, search, ensemble, CAMs, report."""
    from muratune.demo import run_demo

    report = run_demo(
        out, run_in_process, studies=studies, trials=trials, overwrite=overwrite, epochs=epochs, echo=typer.echo
    )
    if open_report:
        import webbrowser

        webbrowser.open(report.as_uri())
