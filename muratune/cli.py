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
    studies: Annotated[int, typer.Option(min=1, help="Number of studies over both splits.")] = 600,
    seed: Annotated[int, typer.Option(min=0, help="Random seed; the same seed gives the same dataset.")] = 0,
    difficulty: Annotated[
        str, typer.Option(help="Finding strength: easy, medium, hard, or a number in (0, 1] (1 = easiest).")
    ] = "medium",
    size: Annotated[int, typer.Option(min=16, help="Approximate long side of the images, in pixels.")] = 512,
    workers: Annotated[int, typer.Option(min=0, help="Processes used to draw images (0 = all cores).")] = 0,
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
    deep: Annotated[
        bool, typer.Option("--deep", help="Decode every image (default: read only each image's first and last bytes).")
    ] = False,
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


@data_app.command("cache")
def data_cache(
    root: Annotated[Path, typer.Argument(help="Folder holding MURA-v1.1/ (or the MURA-v1.1 folder itself).")],
    size: Annotated[int, typer.Option(min=1, help="Side of the cached square images, in pixels.")] = 224,
    mode: Annotated[str, typer.Option(help="Resize mode: pad (keep aspect, pad to square) or stretch.")] = "pad",
    cache_dir: Annotated[
        Path | None, typer.Option(help="Cache root (default $MURATUNE_CACHE or the user cache folder).")
    ] = None,
    workers: Annotated[int, typer.Option(min=0, help="Decoding threads (0 = all cores).")] = 0,
    skip_bad_images: Annotated[
        bool, typer.Option("--skip-bad-images", help="Exclude unreadable images instead of stopping.")
    ] = False,
) -> None:
    """Decode every image once into the shared memory-mapped cache, ahead of a search."""
    from muratune.data.cache import build_cache
    from muratune.data.index import load_index

    index = load_index(root)
    cache = build_cache(index, size, mode, cache_dir=cache_dir, workers=workers, skip_bad_images=skip_bad_images)
    typer.echo(f"cache: {cache.path} ({len(cache.index)} images at {size}px, {mode})")
    for item in cache.excluded:
        typer.echo(f"excluded: {item['reason']}", err=True)


@data_app.command("policies")
def data_policies() -> None:
    """List the named augmentation policies."""
    from muratune.data.augment import list_policies

    for name, description in list_policies().items():
        typer.echo(f"{name:<20} {description}")


@data_app.command("preview")
def data_preview(
    root: Annotated[Path, typer.Argument(help="Folder holding MURA-v1.1/.")],
    policy: Annotated[str, typer.Option(help="Augmentation policy name (see `muratune data policies`).")],
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("preview.png"),
    images: Annotated[int, typer.Option(min=1, help="How many dataset images (rows).")] = 4,
    samples: Annotated[int, typer.Option(min=1, help="Augmented samples per image (columns).")] = 4,
    size: Annotated[int, typer.Option(min=1, help="Tile size in pixels.")] = 224,
    seed: Annotated[int, typer.Option(min=0, help="Random seed.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing OUT file.")] = False,
) -> None:
    """Write a PNG grid of augmented samples, to see what a policy does."""
    import numpy as np

    from muratune.data.augment import preview_policy
    from muratune.data.images import read_image
    from muratune.data.index import absolute_image_paths, load_index
    from muratune.fileio import refuse_existing

    refuse_existing(out, overwrite)
    index = load_index(root)
    picks = np.random.default_rng(seed).choice(len(index), size=min(images, len(index)), replace=False)
    files = absolute_image_paths(index).iloc[sorted(picks)]
    written = preview_policy([read_image(f) for f in files], policy, out, size=size, per_image=samples, seed=seed)
    typer.echo(f"wrote {written}")


# --------------------------------------------------------------------------------------------- train/search
ConfigArg = Annotated[Path, typer.Argument(help="Experiment config YAML (see configs/).")]
DataOpt = Annotated[Path | None, typer.Option("--data", help="Dataset root; overrides data.root.")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override a config field: --set budget.num_samples=4 (repeatable).")
]


def _load(config: Path, data: Path | None, overrides: list[str] | None, name: str | None = None):
    from muratune.config import load_config

    values = {}
    if data is not None:
        values["data.root"] = str(data)
    if name is not None:
        values["name"] = name
    return load_config(config, overrides, values)


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
    import shutil

    import yaml

    from muratune.config import HYPERPARAMETERS, parse_override
    from muratune.fileio import refuse_existing
    from muratune.search.space import validate_space
    from muratune.trainables.train import FolderReporter, train_trial

    settings = _load(config, data, set_)
    validate_space(settings)
    hparams = settings.space.defaults()
    for text in hp or []:
        key, value = parse_override(text)
        if key[0] not in HYPERPARAMETERS or len(key) != 1:
            raise UserError(f"--hp {text!r}: unknown hyperparameter; choose from {', '.join(HYPERPARAMETERS)}")
        hparams[key[0]] = value
    if not resume:
        refuse_existing(out, overwrite)
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    typer.echo("hyperparameters: " + yaml.safe_dump(hparams, default_flow_style=True).strip())
    train_trial({**hparams, "settings": settings}, FolderReporter(out, resume=resume, echo=typer.echo))
    typer.echo(f"checkpoints: {out}")


@app.command("search")
def search_command(
    config: ConfigArg,
    data: DataOpt = None,
    name: Annotated[str | None, typer.Option(help="Experiment name (default: the config's name).")] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address, e.g. 'auto' (default: RAY_ADDRESS or local Ray).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted search with this name.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing experiment with this name.")] = False,
    skip_bad_images: Annotated[
        bool,
        typer.Option("--skip-bad-images", help="Leave unreadable images out (listed in the experiment's cache.json)."),
    ] = False,
    set_: SetOpt = None,
) -> None:
    """Search hyperparameters with Ray Tune (Optuna TPE searcher, ASHA scheduler)."""
    from muratune.search.tuner import run_search

    if skip_bad_images:
        set_ = [*(set_ or []), "data.skip_bad_images=true"]
    settings = _load(config, data, set_, name)
    run_search(settings, address=address, resume=resume, overwrite=overwrite, echo=typer.echo)


# --------------------------------------------------------------------------------------------- ensemble/predict
@app.command("ensemble")
def ensemble_command(
    experiment: Annotated[Path, typer.Argument(help="Experiment folder written by `muratune search`.")],
    size: Annotated[int, typer.Option("--size", min=1, help="Most members per ensemble (greedy picks, top-k K).")] = 5,
    strategy: Annotated[
        list[str] | None,
        typer.Option(help="best-single, top-k-mean, greedy or greedy-per-body-part (repeatable; default: all)."),
    ] = None,
    per_body_part: Annotated[
        bool, typer.Option("--per-body-part", help="Tune one decision threshold per body part on internal val.")
    ] = False,
    tta: Annotated[bool, typer.Option("--tta", help="Horizontal-flip test-time augmentation.")] = False,
    rank_by: Annotated[str, typer.Option(help="top-k-mean ranking on internal val: kappa or loss.")] = "kappa",
    overwrite: Annotated[bool, typer.Option(help="Replace existing EXPERIMENT/ensemble/<strategy> folders.")] = False,
) -> None:
    """Select ensembles of the best checkpoints on internal val, save them, and score them on the test split."""
    from muratune.ensemble.build import build_ensembles

    build_ensembles(
        experiment,
        size=size,
        strategies=strategy,
        tune_thresholds=per_body_part,
        tta=tta,
        overwrite=overwrite,
        by=rank_by,
        echo=typer.echo,
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
        ensemble, input_csv, output_csv, root, probabilities, overwrite, warn=_warn, skip_bad_images=skip_bad_images
    )
    typer.echo(summary, err=True)


def _warn(message: str) -> None:
    typer.echo(f"muratune: warning: {message}", err=True)


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option(help="Folder for the data, experiment and report.")] = Path("demo-out"),
    studies: Annotated[int, typer.Option(min=1, help="Synthetic studies to generate.")] = 600,
    trials: Annotated[int, typer.Option(min=1, help="Search trials.")] = 8,
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Maximum epochs per trial (default: the demo config's).")
    ] = None,
    open_report: Annotated[bool, typer.Option("--open", help="Open the report in a browser at the end.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier demo in OUT.")] = False,
) -> None:
    """Run the whole pipeline on synthetic data on this machine: data, cache, search, ensemble, CAMs, report."""
    from muratune.demo import run_demo

    report = run_demo(out, studies=studies, trials=trials, overwrite=overwrite, epochs=epochs, echo=typer.echo)
    if open_report:
        import webbrowser

        webbrowser.open(report.as_uri())


# --------------------------------------------------------------------------------------------- serve
@app.command("serve")
def serve_command(
    ensemble: Annotated[Path, typer.Argument(help="Ensemble folder (EXPERIMENT/ensemble/<strategy>) or a checkpoint.")],
    host: Annotated[str, typer.Option(help="Address to bind; loopback unless you mean to expose it.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP port.")] = 8000,
    replicas: Annotated[int, typer.Option(min=1, help="Model replicas (each holds the whole ensemble).")] = 1,
    cpus_per_replica: Annotated[float, typer.Option(min=0, help="CPUs reserved per model replica.")] = 1.0,
    gpus_per_replica: Annotated[float, typer.Option(min=0, help="GPUs per model replica (fractions share one).")] = 0.0,
    max_request_mb: Annotated[float, typer.Option(min=0.01, help="Largest request body; larger ones get 413.")] = 32.0,
    max_files: Annotated[int, typer.Option(min=1, help="Most views per study.")] = 12,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address, e.g. 'auto' (default: RAY_ADDRESS or local Ray).")
    ] = None,
    cam_shifts: Annotated[
        int,
        typer.Option(min=1, max=8, help="CAM shift averaging per axis (1 = off: about half the CPU time per view)."),
    ] = 2,
    max_pixels: Annotated[
        int, typer.Option(min=1, help="Largest image in pixels, read from its header before decoding (413 above).")
    ] = 40_000_000,
    max_request_pixels: Annotated[
        int, typer.Option(min=1, help="Most pixels of one request's views together (413 above).")
    ] = 80_000_000,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(help="Another Host name clients may use (repeatable); the bound host and loopback always are."),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="MURATUNE_API_KEY", show_envvar=True, help="API key; required to bind beyond loopback."),
    ] = None,
) -> None:
    """Serve an ensemble over HTTP with Ray Serve: POST /predict and /cam, GET /health and /info, a page at /."""
    from PIL import Image

    from muratune.serve.app import ServeLimits
    from muratune.serve.deploy import ServeOptions, serve_until_interrupted

    if max_pixels > Image.MAX_IMAGE_PIXELS:
        raise UserError(f"--max-pixels {max_pixels}: above Pillow's bomb limit ({Image.MAX_IMAGE_PIXELS})")
    limits = ServeLimits(
        max_request_bytes=int(max_request_mb * 1024 * 1024),
        max_files=max_files,
        max_pixels=max_pixels,
        max_request_pixels=max_request_pixels,
    )
    options = ServeOptions(host, port, replicas, cpus_per_replica, gpus_per_replica, limits, cam_shifts,
                           tuple(allowed_host or ()), api_key or None)  # fmt: skip
    serve_until_interrupted(ensemble, options, address, echo=typer.echo)


# --------------------------------------------------------------------------------------------- cam
@app.command("cam")
def cam_command(
    ensemble: Annotated[Path, typer.Argument(help="Ensemble folder (EXPERIMENT/ensemble/<strategy>) or a checkpoint.")],
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
    from muratune.cam.export import export_cams

    summary = export_cams(
        ensemble,
        out,
        study=study,
        csv=csv,
        root=root,
        abnormal_only=abnormal_only,
        overwrite=overwrite,
        layer=layer,
        method=method,
        shifts=shifts,
        threshold=threshold,
        score_boxes=score,
        warn=_warn,
    )
    for line in summary.lines():
        typer.echo(line)


# --------------------------------------------------------------------------------------------- report/score
ReplicatesOpt = Annotated[
    int, typer.Option(min=1, help="Bootstrap replicates per 95% CI (studies resampled per body part).")
]
SeedOpt = Annotated[int, typer.Option(min=0, help="Bootstrap random seed.")]


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
    from muratune.report.build import write_report

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


# --------------------------------------------------------------------------------------------- entry
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
    except CLICK_BAD_VALUES as err:  # a value out of range (--size 0, --seed -1): one line naming the option
        typer.echo(f"muratune: error: {err.format_message()}", err=True)
        sys.exit(err.exit_code)
    except CLICK_ERRORS as err:
        err.show()
        sys.exit(err.exit_code)
    except CLICK_ABORTS:
        typer.echo("muratune: interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
