"""A one-member ensemble with random weights, written directly (enough for predict, serve and loading tests), and the
keys `ensemble.json` holds, in file order."""

from __future__ import annotations

from pathlib import Path


def make_ensemble(folder: Path) -> Path:
    """Write a one-member ensemble (resnet10t, random weights, 32 px) in ``folder``; predict needs no training."""
    from muratune.ensemble.predictor import file_sha256
    from muratune.fileio import write_json
    from muratune.layout import ENSEMBLE_FILE
    from muratune.trainables import checkpoint as ckpt
    from muratune.trainables.models import create_model

    member = folder / "members" / "m0"
    member.mkdir(parents=True)
    ckpt.save_weights(create_model("resnet10t", in_chans=1), member / ckpt.MODEL_FILE)
    data_config = {"image_size": 32, "resize_mode": "pad", "in_chans": 1, "mean": [0.5], "std": [0.25]}
    write_json(member / ckpt.TRIAL_FILE, {"backbone": "resnet10t", "data_config": data_config})
    entry = {"name": "m0", "path": "members/m0", "sha256": file_sha256(member / ckpt.MODEL_FILE)}
    write_json(folder / ENSEMBLE_FILE, {"members": [entry], "weights": {"all": [1.0]}})
    return folder


# The keys of ensemble.json that muratune writes (0.1's, and calibration), in file order: a search ensemble's and a
# cv ensemble's.
SEARCH_KEYS = [
    "format",
    "muratune_version",
    "strategy",
    "size",
    "ranked_by",
    "tta",
    "calibration",
    "thresholds",
    "threshold_default",
    "tune_thresholds",
    "weights",
    "data_config",
    "val_score",
    "test_score",
    "members",
]
CV_KEYS = [
    "format",
    "muratune_version",
    "strategy",
    "selected_strategy",
    "size",
    "ranked_by",
    "tta",
    "calibration",
    "thresholds",
    "threshold_default",
    "tune_thresholds",
    "folds",
    "epochs",
    "weights",
    "data_config",
    "configurations",
    "dropped_configurations",
    "oof_score",
    "test_score",
    "default",
    "members",
]
