"""Synthetic generator benchmark: images/s on one core, split into drawing and PNG encoding. Target: >= 100 images/s.

Two passes over the same studies, both in this one process with OpenCV on one thread:

1. `generate_dataset(..., workers=1)` end to end (plan, draw, encode, write the files and CSVs), timed by the wall
   clock and by this process's CPU time. On a shared machine the CPU time is the fair per-core figure: the wall
   clock also counts the time other processes hold the core. The load average is printed next to both.
2. The same images drawn and encoded again in memory, timing `draw_image` and `encode_png` separately.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2

from muratune.data.synth import ROOT_NAME, draw_image, encode_png, generate_dataset, parse_difficulty, plan_dataset

TARGET_IMAGES_PER_CORE_SECOND = 100.0


def load() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def end_to_end(args: argparse.Namespace, scratch: Path) -> tuple[int, float, float, int]:
    """Generate the dataset on one worker; return images, wall seconds, CPU seconds and bytes of PNG."""
    wall, cpu = time.perf_counter(), time.process_time()
    summary = generate_dataset(
        scratch, args.studies, args.seed, args.difficulty, args.long_side, workers=1, overwrite=True
    )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    size = sum(p.stat().st_size for p in (scratch / ROOT_NAME).rglob("*.png"))
    return sum(summary.images.values()), wall, cpu, size


def split(args: argparse.Namespace) -> tuple[float, float]:
    """Draw and encode every image of the plan in memory; return CPU seconds spent drawing and encoding."""
    strength = parse_difficulty(args.difficulty)
    drawing = encoding = 0.0
    for study in plan_dataset(args.studies, args.seed, strength):
        for spec in study.images:
            start = time.thread_time()
            image, _ = draw_image(spec, args.seed, strength, args.long_side)
            drawn = time.thread_time()
            encode_png(image)
            drawing += drawn - start
            encoding += time.thread_time() - drawn
    return drawing, encoding


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=210, help="studies to generate (210 give about 500 images)")
    parser.add_argument("--long-side", type=int, default=512, help="approximate long side of the images, in pixels")
    parser.add_argument("--difficulty", default="medium", help="easy, medium, hard or a number in (0, 1]")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark."""
    args = parse_args(argv)
    cv2.setNumThreads(1)
    print(f"load average before: {load()}")
    with tempfile.TemporaryDirectory(prefix="muratune-bench-") as scratch:
        images, wall, cpu, size = end_to_end(args, Path(scratch))
    print(
        f"generate_dataset, 1 worker: {images} images of ~{args.long_side} px in {wall:.2f} s wall, {cpu:.2f} s CPU; "
        f"{size / images / 1024:.0f} KiB/image"
    )
    drawing, encoding = split(args)
    per_image = (drawing + encoding) / images
    print(
        f"per image (CPU): drawing {drawing / images * 1e3:.2f} ms + PNG encoding {encoding / images * 1e3:.2f} ms "
        f"= {per_image * 1e3:.2f} ms ({drawing / (drawing + encoding):.0%} drawing)"
    )
    print(f"load average after: {load()}")
    rate, wall_rate = images / cpu, images / wall
    ratio = rate / TARGET_IMAGES_PER_CORE_SECOND
    verdict = "ok" if ratio >= 1.0 else "BELOW TARGET"
    print(
        f"synth speed: {rate:.0f} images/s/core by CPU time ({wall_rate:.0f} by wall clock); "
        f"{ratio:.2f}x the target of {TARGET_IMAGES_PER_CORE_SECOND:.0f} images/s/core {verdict}"
    )


if __name__ == "__main__":
    main()
