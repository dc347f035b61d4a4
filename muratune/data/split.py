"""The internal train/val split: grouped by patient, stratified by body part and label; official valid = test."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from muratune.constants import (
    BODY_PART,
    LABEL,
    PATIENT_ID,
    SPLIT,
    SPLIT_TRAIN,
    SPLIT_VALID,
    STUDY_PATH,
    SUBSET,
    SUBSET_TEST,
    SUBSET_TRAIN,
    SUBSET_VAL,
)
from muratune.errors import UserError


def internal_split(df: pd.DataFrame, val_fraction: float = 0.1, seed: int = 0) -> pd.DataFrame:
    """Split the official train split into internal train and val subsets; the official valid split is the test set.

    Patients are never shared between subsets. Patients are assigned greedily, largest first and otherwise in a
    seeded random order, to whichever subset brings the val count of each (body part, label) stratum of studies
    closer to ``val_fraction`` of that stratum, then single moves refine the result (see `greedy_assign`).
    Both subsets get at least one patient when there are two or more.

    Args:
        df: the index from `load_index` (needs ``study_path``, ``patient_id``, ``body_part``, ``label``, ``split``).
        val_fraction: the share of train studies to hold out for internal validation, in (0, 1).
        seed: the random seed; the same index and seed give the same split.

    Returns:
        A copy of ``df`` with a ``subset`` column: ``train`` or ``val`` for the train split, ``test`` for valid.

    Raises:
        UserError: ``val_fraction`` is not strictly between 0 and 1.
    """
    _check_fraction(val_fraction)
    out = df.copy()
    out[SUBSET] = SUBSET_TEST
    train = out[SPLIT] == SPLIT_TRAIN
    unknown = sorted(set(out.loc[~train & (out[SPLIT] != SPLIT_VALID), SPLIT]))
    if unknown:
        raise UserError(f"unknown split value(s) {unknown}; expected {SPLIT_TRAIN} or {SPLIT_VALID}")
    val_patients = assign_val_patients(out.loc[train], val_fraction, seed)
    is_val = out[PATIENT_ID].isin(val_patients)
    out.loc[train, SUBSET] = np.where(is_val[train], SUBSET_VAL, SUBSET_TRAIN)
    return out


def _check_fraction(val_fraction: float) -> None:
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)):
        raise UserError(f"val_fraction must be a number between 0 and 1 (exclusive), got {val_fraction!r}")
    if not (math.isfinite(val_fraction) and 0 < val_fraction < 1):
        raise UserError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")


def study_counts_by_patient(train: pd.DataFrame) -> pd.DataFrame:
    """Count each patient's studies per (body part, label) stratum: one row per patient, one column per stratum."""
    studies = train.drop_duplicates(STUDY_PATH)
    strata = studies[BODY_PART].astype(str) + "/" + studies[LABEL].astype(str)
    counts = pd.crosstab(studies[PATIENT_ID].astype(str), strata)
    return counts.sort_index()


def assign_val_patients(train: pd.DataFrame, val_fraction: float, seed: int) -> set[str]:
    """Choose the val patients of the train split (see `internal_split` for the method)."""
    counts = study_counts_by_patient(train)
    if len(counts) == 0:
        return set()
    matrix = counts.to_numpy(dtype=np.float64)
    order = _patient_order(matrix, seed)
    chosen = greedy_assign(matrix, order, val_fraction)
    _ensure_both_subsets(chosen, order)
    return set(counts.index[chosen])


def _patient_order(matrix: np.ndarray, seed: int) -> np.ndarray:
    """Seeded random order, then stably the patients with the most studies first (they are the hardest to place)."""
    shuffled = np.random.default_rng(seed).permutation(len(matrix))
    sizes = matrix[shuffled].sum(axis=1)
    return shuffled[np.argsort(-sizes, kind="stable")]


def greedy_assign(matrix: np.ndarray, order: np.ndarray, val_fraction: float, max_passes: int = 20) -> np.ndarray:
    """Assign patients to val so that each stratum's val count is close to ``val_fraction`` of the stratum.

    The cost is the sum over strata of the squared relative deviation from the target. A first pass puts each
    patient, in order, into val if that lowers the cost. Then passes over all patients move any single patient
    whose move lowers the cost (undoing overshoot left by patients with studies in several strata), until none does.

    Args:
        matrix: studies per patient (rows) and stratum (columns).
        order: the order in which patients are considered.
        val_fraction: the target share of each stratum in val.
        max_passes: the most refinement passes after the first one.

    Returns:
        A boolean mask over patients: True for val.
    """
    target = (matrix.sum(axis=0) * val_fraction).tolist()
    scale = [max(value, 1.0) for value in target]
    val = [0.0] * matrix.shape[1]
    chosen = np.zeros(len(matrix), dtype=bool)
    # Plain Python lists: patients have one to a few strata, where NumPy's per-call overhead dominates.
    studies_of = [[(int(j), float(row[j])) for j in np.nonzero(row)[0]] for row in matrix]
    for patient in order:
        if _move_gain(studies_of[patient], val, target, scale, +1) > 0:
            _apply(studies_of[patient], val, +1)
            chosen[patient] = True
    for _ in range(max_passes):
        moved = False
        for patient in order:
            sign = -1 if chosen[patient] else +1
            if _move_gain(studies_of[patient], val, target, scale, sign) > 1e-12:
                _apply(studies_of[patient], val, sign)
                chosen[patient] = not chosen[patient]
                moved = True
        if not moved:
            break
    return chosen


def _move_gain(
    studies: list[tuple[int, float]], val: list[float], target: list[float], scale: list[float], sign: int
) -> float:
    """How much the cost drops when one patient's studies are added to (+1) or removed from (-1) val."""
    gain = 0.0
    for stratum, count in studies:
        before = (val[stratum] - target[stratum]) / scale[stratum]
        after = (val[stratum] + sign * count - target[stratum]) / scale[stratum]
        gain += before * before - after * after
    return gain


def _apply(studies: list[tuple[int, float]], val: list[float], sign: int) -> None:
    for stratum, count in studies:
        val[stratum] += sign * count


def _ensure_both_subsets(chosen: np.ndarray, order: np.ndarray) -> None:
    """With two or more patients, move the last-considered (smallest) patient so that no subset is empty."""
    if len(chosen) < 2:
        return
    if not chosen.any():
        chosen[order[-1]] = True
    elif chosen.all():
        chosen[order[-1]] = False


# ------------------------------------------------------------------------------------------------- folds
FOLD = "fold"


def patient_folds(df: pd.DataFrame, folds: int, seed: int = 0) -> pd.DataFrame:
    """Assign the official train split's studies to ``folds`` folds, grouped by patient and stratified.

    sklearn's ``StratifiedGroupKFold`` runs on one row per study, with the patient as group and the study's
    (body part, label) stratum as class, so no patient has studies in two folds. The official valid split (the
    test set) takes no part: its rows get fold ``-1``.

    Args:
        df: the index from `load_index` (needs ``study_path``, ``patient_id``, ``body_part``, ``label``, ``split``).
        folds: the number of folds, at least 2 and at most the number of train patients.
        seed: the shuffling seed; the same index and seed give the same folds.

    Returns:
        A copy of ``df`` with a ``fold`` column: ``0 .. folds-1`` on train rows, ``-1`` on valid rows.

    Raises:
        UserError: ``folds`` is below 2, above the number of train patients or above the largest stratum.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    out = df.copy()
    out[FOLD] = -1
    studies = out.loc[out[SPLIT] == SPLIT_TRAIN].drop_duplicates(STUDY_PATH)
    patients = studies[PATIENT_ID].nunique()
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise UserError(f"folds must be an integer of at least 2, got {folds!r}")
    if folds > patients:
        raise UserError(f"folds: {folds} folds need at least {folds} train patients, the dataset has {patients}")
    strata = studies[BODY_PART].astype(str) + "/" + studies[LABEL].astype(str)
    largest = int(strata.value_counts().max())
    if folds > largest:  # sklearn refuses when every stratum is smaller than the number of folds
        raise UserError(
            f"folds: {folds} folds need a (body part, label) group of at least {folds} train studies; the largest "
            f"has {largest}"
        )
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold_of = {}
    for k, (_, held_out) in enumerate(splitter.split(studies, strata, groups=studies[PATIENT_ID].astype(str))):
        fold_of.update(dict.fromkeys(studies[STUDY_PATH].iloc[held_out], k))
    train = out[SPLIT] == SPLIT_TRAIN
    out.loc[train, FOLD] = out.loc[train, STUDY_PATH].map(fold_of).astype(int)
    return out


def fold_split(df: pd.DataFrame, folds: int, fold: int, seed: int = 0) -> pd.DataFrame:
    """Hold out one fold of `patient_folds` as the val subset and train on the others; valid stays the test set.

    Returns:
        A copy of ``df`` with ``fold`` and ``subset`` columns (``train``/``val``/``test``), the same ``subset``
        values `internal_split` writes, so a trial trains on either without knowing which.

    Raises:
        UserError: ``fold`` is not in ``0 .. folds-1``, or ``folds`` is invalid (see `patient_folds`).
    """
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < folds:
        raise UserError(f"fold must be an integer in 0..{folds - 1}, got {fold!r}")
    out = patient_folds(df, folds, seed)
    out[SUBSET] = SUBSET_TEST
    train = out[SPLIT] == SPLIT_TRAIN
    out.loc[train, SUBSET] = np.where(out.loc[train, FOLD] == fold, SUBSET_VAL, SUBSET_TRAIN)
    return out
