"""The keys of ``ensemble.json`` that other stages read (torch-free, so the report can import it)."""

from __future__ import annotations

from typing import Any

FORMAT_VERSION = 1
GLOBAL = "all"  # key of the weights used for every body part without weights of its own
# Whether per-body-part thresholds were tuned; muratune 0.1 wrote it as ``thresholds_tuned``.
TUNE_THRESHOLDS = "tune_thresholds"
OLD_TUNE_THRESHOLDS = "thresholds_tuned"


def thresholds_were_tuned(spec: dict[str, Any]) -> bool:
    """Whether an ensemble's thresholds were tuned per body part (either spelling of the key)."""
    return bool(spec.get(TUNE_THRESHOLDS, spec.get(OLD_TUNE_THRESHOLDS, False)))
