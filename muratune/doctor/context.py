"""What every doctor check reads: the sizes of a quick or full run, and the context (config, cluster, folders)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from muratune.config import ExperimentConfig, validate_config


@dataclass(frozen=True)
class Sizes:
    """How much each check does: a full run takes minutes on a GPU node, ``--quick`` a few on 2 CPU cores."""

    studies: int
    long_side: int
    loader_images: int
    steps: int
    warmup: int
    trial_steps: int
    timeout_s: float

    @classmethod
    def create(cls, quick: bool, image_size: int) -> Sizes:
        """The quick or the full sizes (synthetic images drawn at twice the config's size, within 64-1024 px)."""
        if quick:
            return cls(studies=80, long_side=64, loader_images=256, steps=5, warmup=2, trial_steps=2, timeout_s=300)
        side = max(64, min(1024, 2 * image_size))
        return cls(studies=400, long_side=side, loader_images=1024, steps=30, warmup=5, trial_steps=10, timeout_s=900)


@dataclass
class Context:
    """What every check reads: the shrunk config, the cluster as Ray sees it, the doctor's folders, earlier results.

    ``local`` is a scratch folder at the same path on every node (synthetic data, the probe checkpoint, CAMs);
    ``storage`` is where the doctor's searches write, under the config's storage, which every node must reach.
    """

    config: ExperimentConfig
    user_config: ExperimentConfig
    hparams: dict[str, Any]
    sizes: Sizes
    quick: bool
    address: str | None
    token: str
    local: Path
    storage: str
    nodes: list[dict] = field(default_factory=list)
    results: dict[str, dict] = field(default_factory=dict)
    echo: Callable[[str], None] = print

    @property
    def gpu_nodes(self) -> list[dict]:
        """Alive nodes that offer GPUs to Ray."""
        return [n for n in self.nodes if n["Resources"].get("GPU", 0) > 0]

    @property
    def use_gpu(self) -> bool:
        """Whether the cluster has a GPU; if not, every GPU path runs on the CPU instead."""
        return bool(self.gpu_nodes)

    def with_values(self, values: dict[str, Any]) -> ExperimentConfig:
        """``config`` with dotted keys set (``{"budget.num_samples": 4}``), validated again."""
        return with_values(self.config, values)

    def probe_resources(self) -> dict[str, float]:
        """Ray task options of a probe: one core and, on a GPU cluster, one whole GPU."""
        return {"num_cpus": 1, "num_gpus": 1 if self.use_gpu else 0}

    def result(self, name: str) -> dict:
        """An earlier check's measurements; raises when that check failed, so this one fails naming it."""
        if name not in self.results:
            raise RuntimeError(f"not run: needs the {name} check, which failed")
        return self.results[name]


def with_values(config: ExperimentConfig, values: dict[str, Any]) -> ExperimentConfig:
    """A copy of ``config`` with dotted keys set, validated again; what the user left unset is resolved again (the
    default scheduler gives way where the checks fix the space)."""
    raw = config.model_dump(mode="json", exclude_unset=True)
    for key, value in values.items():
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return validate_config(raw, source="doctor")
