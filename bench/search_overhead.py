"""Benchmark: wall time of 4 fixed trials through `muratune search` (concurrency 1) against a plain Python loop.

Both run the same train function on the same synthetic data; Ray's start-up is excluded. Target: ratio <= 1.10.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

CONFIGS = [
    {"backbone": "resnet10t", "lr": 1e-3, "batch_size": 32, "augment_policy": "flip", "optimizer": "adamw"},
    {"backbone": "resnet10t", "lr": 3e-3, "batch_size": 64, "augment_policy": "mura-paper", "optimizer": "adam"},
    {"backbone": "resnet14t", "lr": 1e-3, "batch_size": 32, "augment_policy": "flip", "optimizer": "adam"},
    {"backbone": "resnet14t", "lr": 5e-4, "batch_size": 64, "augment_policy": "none", "optimizer": "adamw"},
]
COMMON = {"finetune_depth": "all", "weight_decay": 1e-5}


class _Silent:
    """Reporter for the plain loop: keeps nothing, like a loop a user would write."""

    def restore_dir(self) -> None:
        return None

    def report(self, metrics: dict, checkpoint_dir: Path) -> None:
        pass


def _config(data: Path, storage: Path, epochs: int):
    from muratune.config import load_config

    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    return load_config(
        demo,
        [
            f"budget.max_epochs={epochs}",
            f"budget.grace_period={epochs}",
            "budget.num_samples=4",
            "resources.max_concurrent_trials=1",
            "name=overhead",
            "budget.scheduler=none",
        ],
        {"data.root": str(data), "storage": str(storage)},
    )


def run_plain(config) -> float:
    """The same train function, called in a loop in this process."""
    from muratune.trainables.trial import train_trial

    started = time.perf_counter()
    for point in CONFIGS:
        train_trial({**point, **COMMON}, config, _Silent())
    return time.perf_counter() - started


def run_search(config) -> float:
    """The 4 configs through muratune's Tuner (Ray already started, so its start-up is excluded)."""
    from ray.tune.search import BasicVariantGenerator

    from muratune.search.experiment import prepare_experiment
    from muratune.search.factories import create_tuner

    prepare_experiment(config, resume=False, overwrite=True)
    searcher = BasicVariantGenerator(points_to_evaluate=[{**p, **COMMON} for p in CONFIGS], max_concurrent=1)
    search = create_tuner(config, searcher=searcher)
    started = time.perf_counter()
    search.fit()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, help="existing synthetic dataset (default: generate one)")
    parser.add_argument("--studies", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    import ray

    from muratune.cluster import connect_ray
    from muratune.search.experiment import warm_cache

    work = Path(tempfile.mkdtemp(prefix="muratune-bench-"))
    data = args.data
    if data is None:
        from muratune.data.synth import generate_dataset

        data = work / "data"
        generate_dataset(data, studies=args.studies, seed=0, difficulty="easy", long_side=256)
    config = _config(data, work / "runs", args.epochs)
    warm_cache(config)
    connect_ray(None)
    try:
        plain_s = run_plain(config)  # first: it pays the cold page cache and imports, not the search
        search_s = run_search(config)
    finally:
        ray.shutdown()
    print(f"4 trials x {args.epochs} epochs on {data}")
    print(f"plain loop:      {plain_s:7.1f} s  ({plain_s / 4:.1f} s per trial)")
    print(f"muratune search: {search_s:7.1f} s  ({search_s / 4:.1f} s per trial)")
    print(f"ratio search/plain: {search_s / plain_s:.3f}  (target <= 1.10)")


if __name__ == "__main__":
    main()
