"""Search space: validated YAML entries become Ray Tune domains (which OptunaSearch converts for TPE)."""

from __future__ import annotations

from typing import Any

from muratune.config import SpaceConfig, SpaceEntry


def create_domain(entry: SpaceEntry) -> Any:
    """Turn one space entry into a Ray Tune domain (or a constant for ``fixed``)."""
    from ray import tune

    if entry.type == "choice":
        return tune.choice(list(entry.values or []))
    if entry.type == "fixed" or entry.low is None or entry.high is None:
        return entry.value
    if entry.type == "loguniform":
        return tune.loguniform(entry.low, entry.high)
    if entry.type == "uniform":
        return tune.uniform(entry.low, entry.high)
    if entry.log:
        return tune.lograndint(int(entry.low), int(entry.high) + 1)
    return tune.randint(int(entry.low), int(entry.high) + 1)


def create_search_space(space: SpaceConfig) -> dict[str, Any]:
    """Return the Tune param space of the hyperparameters (constants for fixed values)."""
    return {name: create_domain(entry) for name, entry in space.entries().items()}
