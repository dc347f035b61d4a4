"""Loader benchmark: decode-every-epoch PNG pipeline versus the shared uint8 cache, with and without augmentation."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from muratune.data.augment import create_transform
from muratune.data.cache import build_cache
from muratune.data.dataset import CachedImageDataset, make_loader
from muratune.data.images import resize_square
from muratune.data.index import absolute_image_paths, load_index
from muratune.data.synth import generate_dataset

TARGET_CACHED_VS_NAIVE = 5.0
TARGET_AUGMENTED_VS_PLAIN = 0.3


class NaiveDataset(Dataset):
    """Decodes, converts, resizes and augments each PNG on every access: the pipeline the cache replaces."""

    def __init__(self, frame: pd.DataFrame, size: int, transform: Callable) -> None:
        self.files = [str(path) for path in absolute_image_paths(frame)]
        self.labels = frame["label"].to_numpy(dtype=np.float32)
        self.size = size
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        with Image.open(self.files[i]) as img:
            gray = np.asarray(img.convert("L"))
        square, _ = resize_square(gray, self.size, "pad")
        image = self.transform(image=square)["image"]
        return torch.from_numpy(np.ascontiguousarray(image)).unsqueeze(0), torch.tensor(self.labels[i]), i


def throughput(loader: DataLoader, epochs: int) -> float:
    """Return images per second over ``epochs`` passes, timed from the first batch (worker start-up excluded)."""
    batches = iter(loader)
    next(batches)
    count, start = 0, time.perf_counter()
    for epoch in range(epochs):
        for images, _labels, _studies in batches if epoch == 0 else loader:
            count += images.shape[0]
    return count / (time.perf_counter() - start)


def dataset_root(args: argparse.Namespace, scratch: Path) -> Path:
    """Return ``--data``, or generate a synthetic dataset of ``--studies`` studies in ``scratch``."""
    if args.data:
        return Path(args.data)
    root = scratch / "data"
    start = time.perf_counter()
    generate_dataset(root, studies=args.studies, seed=0, difficulty="easy", long_side=args.long_side, workers=2)
    print(f"generated {args.studies} synthetic studies ({args.long_side} px) in {time.perf_counter() - start:.1f} s")
    return root


def run(args: argparse.Namespace, scratch: Path) -> dict[str, float]:
    """Measure the three pipelines and return their images/s."""
    frame = load_index(dataset_root(args, scratch))
    start = time.perf_counter()
    cache = build_cache(frame, args.size, cache_dir=args.cache_dir or scratch / "cache", workers=2, progress=False)
    print(f"{len(frame)} images; cache build {time.perf_counter() - start:.1f} s (not counted below): {cache.path}")

    def loader(dataset: Dataset) -> DataLoader:
        return make_loader(dataset, batch_size=args.batch, shuffle=True, num_workers=args.workers)

    augment = create_transform(args.policy, args.size)
    pipelines = {
        f"a naive PNG decode, policy {args.policy}": lambda: loader(NaiveDataset(frame, args.size, augment)),
        f"b cached, policy {args.policy}": lambda: loader(CachedImageDataset(cache, frame, transform=augment)),
        "c cached, policy none": lambda: loader(
            CachedImageDataset(cache, frame, transform=create_transform("none", args.size))
        ),
    }
    rates = {}
    for name, build in pipelines.items():
        rates[name] = throughput(build(), args.epochs)
        print(f"({name}): {rates[name]:8.0f} images/s")
    return rates


def report(rates: dict[str, float]) -> None:
    """Print the ratios against their targets."""
    naive, cached, plain = rates.values()
    for label, ratio, target in (
        ("b/a (cache speed-up)", cached / naive, TARGET_CACHED_VS_NAIVE),
        ("b/c (augmentation cost)", cached / plain, TARGET_AUGMENTED_VS_PLAIN),
    ):
        verdict = "ok" if ratio >= target else "BELOW TARGET"
        print(f"{label}: {ratio:6.2f}  (target >= {target}) {verdict}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--studies", type=int, default=400, help="synthetic studies to generate")
    parser.add_argument("--long-side", type=int, default=512, help="long side of synthetic images, in pixels")
    parser.add_argument("--data", type=Path, help="an existing dataset root to use instead of generating one")
    parser.add_argument("--cache-dir", type=Path, help="cache root (default: a fresh temporary folder)")
    parser.add_argument("--size", type=int, default=224, help="side of the square model input")
    parser.add_argument("--epochs", type=int, default=2, help="passes over the data per pipeline")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--batch", type=int, default=32, help="batch size")
    parser.add_argument("--policy", default="mura-paper", help="augmentation policy of (a) and (b)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark."""
    args = parse_args(argv)
    torch.set_num_threads(1)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="muratune-bench-") as scratch:
        report(run(args, Path(scratch)))


if __name__ == "__main__":
    main()
