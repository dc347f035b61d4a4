"""Checking a config's space against what a trial can build: timm backbones and registered augmentation policies."""

from __future__ import annotations

from muratune.config import ExperimentConfig
from muratune.errors import UserError


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
