"""Names shared by every stage: body parts, column names and metric keys."""

from __future__ import annotations

BODY_PARTS: tuple[str, ...] = (
    "XR_ELBOW",
    "XR_FINGER",
    "XR_FOREARM",
    "XR_HAND",
    "XR_HUMERUS",
    "XR_SHOULDER",
    "XR_WRIST",
)

# Canonical DataFrame columns (one name per concept everywhere).
IMAGE_PATH = "image_path"
STUDY_PATH = "study_path"
PATIENT_ID = "patient_id"
BODY_PART = "body_part"
LABEL = "label"
SPLIT = "split"
SUBSET = "subset"
VIEW = "view"
PROB = "prob"  # a probability of abnormality (of an image, or of a study: the mean of its views)
PROB_UNCALIBRATED = "prob_uncalibrated"  # test_studies.parquet: the study probability before calibration
PRED = "pred"  # a 0/1 prediction given as such (a submission file's label column)
THRESHOLD = "threshold"

# Values of the `split` column: the official MURA splits. The official valid split is the held-out test set.
SPLIT_TRAIN, SPLIT_VALID = "train", "valid"
# Values of the `subset` column added by data.split: the internal subsets of the official train split that the
# search trains and validates on, and the test set (all of the official valid split).
SUBSET_TRAIN, SUBSET_VAL, SUBSET_TEST = "train", "val", "test"

# Metric keys reported by trials, stored in checkpoints and read by the report.
METRIC = "val_kappa"  # the search objective: internal-validation study-level Cohen's kappa
MODE = "max"
VAL_LOSS = "val_loss"
VAL_IMAGE_AUC = "val_image_auc"
VAL_KAPPA = "val_kappa"
VAL_ACCURACY = "val_accuracy"
VAL_AUC = "val_auc"
VAL_SENSITIVITY = "val_sensitivity"
VAL_SPECIFICITY = "val_specificity"
TRAIN_LOSS = "train_loss"
TRAIN_STUDIES = "train_studies"  # the studies a trial trains on (a refit's full model: every train study)
EPOCH = "epoch"
LEARNING_RATE = "lr"


def short_part(body_part: str) -> str:
    """Return the lowercase short name of a body part: ``XR_ELBOW`` -> ``elbow``."""
    return body_part.removeprefix("XR_").lower()


def per_part_key(metric: str, body_part: str) -> str:
    """Return the metric key for one body part, e.g. ``val_kappa/elbow``."""
    return f"{metric}/{short_part(body_part)}"
