"""Search space: validated YAML entries become Ray Tune domains (which OptunaSearch converts for TPE)."""

from __future__ import annotations

from typing import Any

from muratune.config import ExperimentConfig, SpaceConfig, SpaceEntry
from muratune.errors import UserError


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
    return tune.randint(int(entry.low), int(entry.high) + 1)


def create_search_space(space: SpaceConfig) -> dict[str, Any]:
    """Return the Tune param space of the hyperparameters (constants for fixed values)."""
    return {name: create_domain(entry) for name, entry in space.entries().items()}


def validate_space(config: ExperimentConfig) -> None:
    """Check backbone names against timm and policies against the registry, before Ray starts."""
    from muratune.data.augment import list_policies
    from muratune.trainables.models import check_backbone

    for backbone in config.space.backbone.candidate_values():
        try:
            check_backbone(str(backbone))
        except UserError as err:
            raise UserError(f"space.backbone: {err}") from None
    known = list_policies()
    for policy in config.space.augment_policy.candidate_values():
        if policy not in known:
            import difflib

            close = difflib.get_close_matches(str(policy), list(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}"
            raise UserError(f"space.augment_policy: unknown policy {policy!r}{hint}")
