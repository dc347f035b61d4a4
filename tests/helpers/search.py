"""Test-sized search settings: `--set` overrides that shrink the demo config."""

from __future__ import annotations

from pathlib import Path

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def tiny_overrides(root: Path, storage: Path, **extra: object) -> list[str]:
    """``--set`` overrides that shrink the demo config to a test-sized search."""
    base = {
        "data.root": str(root),
        "storage": str(storage),
        "data.image_size": 64,
        "data.num_workers": 0,
        "budget.num_samples": 2,
        "budget.max_epochs": 2,
        "budget.grace_period": 1,
        "resources.cpus_per_trial": 1,
        "resources.max_concurrent_trials": 2,
        "space.backbone": "resnet10t",
    }
    base.update(extra)
    return [f"{key}={value}" for key, value in base.items()]
