"""`muratune data ...`: synthesise, check, cache, list policies, preview."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from muratune.cli.app import data_app


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Argument(help="Folder to write; MURA-v1.1/ is created inside it.")],
    studies: Annotated[int, typer.Option(min=1, help="Number of studies over both splits.")] = 600,
    valid_share: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Share of the studies in the official valid split, muratune's test set, in [0, 1) (0.4 of 750 "
            "studies gives 450 train and 300 test studies).",
        ),
    ] = 0.1,
    seed: Annotated[int, typer.Option(min=0, help="Random seed; the same seed gives the same dataset.")] = 0,
    difficulty: Annotated[
        str, typer.Option(help="Finding strength: easy, medium, hard, or a number in (0, 1] (1 = easiest).")
    ] = "medium",
    size: Annotated[int, typer.Option(min=16, help="Approximate long side of the images, in pixels.")] = 512,
    workers: Annotated[int, typer.Option(min=0, help="Processes used to draw images (0 = all cores).")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset in OUT.")] = False,
    image_format: Annotated[
        str, typer.Option("--format", help="Image files: png, or dicom (12-bit MONOCHROME2 .dcm, windowed).")
    ] = "png",
) -> None:
    """Write a synthetic dataset in the exact MURA v1.1 layout, with planted findings and boxes.csv."""
    from muratune.data.synth import generate_dataset

    summary = generate_dataset(
        out,
        studies=studies,
        seed=seed,
        difficulty=difficulty,
        valid_share=valid_share,
        long_side=size,
        workers=workers,
        overwrite=overwrite,
        image_format=image_format,
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

    from muratune.data.images import read_image
    from muratune.data.index import absolute_image_paths, load_index
    from muratune.data.preview import preview_policy
    from muratune.fileio import Input, check_output, refuse_existing

    check_output(out, [Input(root, "the dataset")], is_dir=False)
    refuse_existing(out, overwrite)
    index = load_index(root)
    picks = np.random.default_rng(seed).choice(len(index), size=min(images, len(index)), replace=False)
    files = absolute_image_paths(index).iloc[sorted(picks)]
    written = preview_policy([read_image(f) for f in files], policy, out, size=size, per_image=samples, seed=seed)
    typer.echo(f"wrote {written}")
