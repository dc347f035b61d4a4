"""Tests for muratune.data.split: grouped, stratified, deterministic internal train/val split."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from muratune.constants import BODY_PARTS, SUBSET
from muratune.data.index import load_index, make_frame
from muratune.data.split import FOLD, fold_split, internal_split, patient_folds
from muratune.errors import UserError
from tests.helpers.mura import make_mura, make_mura_csvs


@pytest.fixture(scope="module")
def big_index(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """An index with the real MURA v1.1 counts and patients with one to three studies."""
    fixture = make_mura_csvs(tmp_path_factory.mktemp("big"))
    return load_index(fixture.base)


def val_shares(split: pd.DataFrame, body_part: str) -> tuple[float, float]:
    """Return the val share of a body part's train studies, and of its abnormal train studies."""
    studies = split.loc[(split["split"] == "train") & (split["body_part"] == body_part)].drop_duplicates("study_path")
    val = studies["subset"] == "val"
    abnormal = studies["label"] == 1
    return val.mean(), (val & abnormal).sum() / abnormal.sum()


def assert_grouped(split: pd.DataFrame) -> None:
    subsets_per_patient = split.groupby("patient_id")["subset"].nunique()
    assert (subsets_per_patient == 1).all()


@pytest.mark.parametrize(("val_fraction", "seed"), [(0.1, 0), (0.1, 1), (0.2, 7), (0.05, 3)])
def test_stratified_within_two_points(big_index: pd.DataFrame, val_fraction: float, seed: int) -> None:
    split = internal_split(big_index, val_fraction=val_fraction, seed=seed)
    for part in BODY_PARTS:
        study_share, abnormal_share = val_shares(split, part)
        assert abs(study_share - val_fraction) <= 0.02, (part, study_share)
        assert abs(abnormal_share - val_fraction) <= 0.02, (part, abnormal_share)


def test_val_prevalence_matches_train(big_index: pd.DataFrame) -> None:
    split = internal_split(big_index)
    studies = split.loc[split["split"] == "train"].drop_duplicates("study_path")
    for part in BODY_PARTS:
        rows = studies.loc[studies["body_part"] == part]
        prevalence = rows.groupby("subset")["label"].mean()
        assert abs(prevalence["val"] - prevalence["train"]) <= 0.02, part


def test_no_patient_in_two_subsets(big_index: pd.DataFrame) -> None:
    split = internal_split(big_index)
    assert_grouped(split)
    assert big_index.groupby("patient_id")["body_part"].nunique().max() > 1, "fixture should span body parts"


def test_test_subset_is_the_valid_split(big_index: pd.DataFrame) -> None:
    split = internal_split(big_index)
    assert ((split["subset"] == "test") == (split["split"] == "valid")).all()
    assert set(split.loc[split["split"] == "train", "subset"]) == {"train", "val"}


def test_deterministic_per_seed(big_index: pd.DataFrame) -> None:
    first = internal_split(big_index, seed=3)
    again = internal_split(big_index, seed=3)
    other = internal_split(big_index, seed=4)
    pd.testing.assert_series_equal(first[SUBSET], again[SUBSET])
    assert not first[SUBSET].equals(other[SUBSET])


def test_does_not_depend_on_row_order(big_index: pd.DataFrame) -> None:
    shuffled = big_index.sample(frac=1.0, random_state=0)
    split = internal_split(shuffled, seed=2)
    pd.testing.assert_series_equal(split[SUBSET].sort_index(), internal_split(big_index, seed=2)[SUBSET])


def test_returns_a_copy(big_index: pd.DataFrame) -> None:
    before = big_index.copy()
    split = internal_split(big_index)
    pd.testing.assert_frame_equal(big_index, before)
    assert SUBSET not in big_index.columns
    assert list(split.columns) == [*big_index.columns, SUBSET]
    assert split.attrs["root"] == big_index.attrs["root"]


@pytest.mark.parametrize("val_fraction", [0, 1, -0.1, 1.5, math.nan, math.inf, "0.1", True])
def test_invalid_fraction(big_index: pd.DataFrame, val_fraction: object) -> None:
    with pytest.raises(UserError, match="val_fraction must be"):
        internal_split(big_index, val_fraction=val_fraction)  # type: ignore[arg-type]


@pytest.mark.parametrize("patients", [1, 2, 3])
def test_tiny_dataset(tmp_path: Path, patients: int) -> None:
    fixture = make_mura(tmp_path, patients_per_part=patients, write_images=False)
    split = internal_split(load_index(fixture.base))
    assert_grouped(split)
    train = split.loc[split["split"] == "train"]
    assert set(train["subset"]) == {"train", "val"}


def test_single_patient_stays_in_train(tmp_path: Path) -> None:
    fixture = make_mura(tmp_path, patients_per_part=1, write_images=False)
    index = load_index(fixture.base)
    one_patient = index.loc[(index["split"] == "valid") | (index["patient_id"] == index["patient_id"].iloc[0])]
    split = internal_split(one_patient)
    assert set(split.loc[split["split"] == "train", "subset"]) == {"train"}


def test_no_train_rows(tmp_path: Path) -> None:
    fixture = make_mura(tmp_path, write_images=False)
    valid_only = load_index(fixture.base, splits=("valid",))
    assert set(internal_split(valid_only)[SUBSET]) == {"test"}


def test_unknown_split_value(tmp_path: Path) -> None:
    fixture = make_mura(tmp_path, write_images=False)
    index = load_index(fixture.base)
    index.loc[0, "split"] = "holdout"
    with pytest.raises(UserError, match="unknown split value"):
        internal_split(index)


_study = st.tuples(
    st.integers(0, 8), st.sampled_from(BODY_PARTS), st.integers(0, 1), st.sampled_from(["train", "valid"])
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_study, max_size=40), st.floats(0.01, 0.99), st.integers(0, 2**32 - 1))
def test_any_small_index_splits_by_patient(studies: list, val_fraction: float, seed: int) -> None:
    records = []
    for number, (patient, part, label, split) in enumerate(studies):
        patient_id = f"patient{patient + (100 if split == 'valid' else 0):05d}"
        study_path = f"MURA-v1.1/{split}/{part}/{patient_id}/study{number + 1}_{'positive' if label else 'negative'}/"
        records.append(
            {
                "image_path": f"{study_path}image1.png",
                "study_path": study_path,
                "patient_id": patient_id,
                "body_part": part,
                "label": label,
                "split": split,
                "view": 1,
                "study_id": number + 1,
            }
        )
    index = make_frame(records, "/data")
    split = internal_split(index, val_fraction=val_fraction, seed=seed)
    assert len(split) == len(index)
    assert_grouped(split.loc[split["split"] == "train"])
    assert ((split["subset"] == "test") == (split["split"] == "valid")).all()
    train_patients = index.loc[index["split"] == "train", "patient_id"].nunique()
    if train_patients >= 2:
        assert set(split.loc[split["split"] == "train", "subset"]) == {"train", "val"}


def test_each_stratum_within_one_study_of_target(big_index: pd.DataFrame) -> None:
    split = internal_split(big_index, val_fraction=0.1, seed=5)
    studies = split.loc[split["split"] == "train"].drop_duplicates("study_path")
    target = studies.groupby(["body_part", "label"]).size() * 0.1
    val = studies.loc[studies["subset"] == "val"].groupby(["body_part", "label"]).size()
    assert (val - target).abs().max() <= 1.0


# ------------------------------------------------------------------------------------------------- folds
@pytest.mark.parametrize(("folds", "seed"), [(5, 0), (3, 1)])
def test_folds_are_grouped_by_patient_and_stratified(big_index: pd.DataFrame, folds: int, seed: int) -> None:
    split = patient_folds(big_index, folds, seed)
    train = split[split["split"] == "train"]
    assert (train.groupby("patient_id")[FOLD].nunique() == 1).all()
    assert set(train[FOLD]) == set(range(folds))
    studies = train.drop_duplicates("study_path")
    for part in BODY_PARTS:
        for label in (0, 1):
            stratum = studies[(studies["body_part"] == part) & (studies["label"] == label)]
            shares = stratum[FOLD].value_counts(normalize=True).reindex(range(folds), fill_value=0)
            assert (abs(shares - 1 / folds) <= 0.02).all(), (part, label, shares.to_dict())


def test_folds_leave_the_valid_split_out_and_are_deterministic(big_index: pd.DataFrame) -> None:
    split = patient_folds(big_index, 4, seed=2)
    assert ((split[FOLD] == -1) == (split["split"] == "valid")).all()
    pd.testing.assert_series_equal(split[FOLD], patient_folds(big_index, 4, seed=2)[FOLD])
    assert not split[FOLD].equals(patient_folds(big_index, 4, seed=3)[FOLD])
    assert FOLD not in big_index.columns


def test_each_train_study_is_held_out_by_exactly_one_fold_split(big_index: pd.DataFrame) -> None:
    held_out = []
    for fold in range(3):
        split = fold_split(big_index, 3, fold, seed=0)
        assert ((split[SUBSET] == "test") == (split["split"] == "valid")).all()
        val = split[split[SUBSET] == "val"]
        assert set(val[FOLD]) == {fold}
        assert not set(val["patient_id"]) & set(split.loc[split[SUBSET] == "train", "patient_id"])
        held_out.extend(val.drop_duplicates("study_path")["study_path"])
    train_studies = big_index.loc[big_index["split"] == "train", "study_path"].unique()
    assert sorted(held_out) == sorted(train_studies)


@pytest.mark.parametrize(("folds", "fold", "message"), [(1, 0, "at least 2"), (3, 3, "0..2"), (3, -1, "0..2")])
def test_invalid_folds(big_index: pd.DataFrame, folds: int, fold: int, message: str) -> None:
    with pytest.raises(UserError, match=message):
        fold_split(big_index, folds, fold)


def test_more_folds_than_patients_is_refused(tmp_path: Path) -> None:
    index = load_index(make_mura(tmp_path, patients_per_part=1, write_images=False).base)
    patients = index.loc[index["split"] == "train", "patient_id"].nunique()
    with pytest.raises(UserError, match=f"{patients + 1} folds need at least {patients + 1} train patients"):
        patient_folds(index, patients + 1)


def test_more_folds_than_the_largest_stratum_is_one_line_not_sklearns_error(tmp_path: Path) -> None:
    index = load_index(make_mura(tmp_path, patients_per_part=3, write_images=False).base)
    train = index[index["split"] == "train"].drop_duplicates("study_path")
    largest = int(train.groupby(["body_part", "label"]).size().max())
    patients = train["patient_id"].nunique()
    assert largest < patients  # the patient check alone would let these folds through to sklearn
    with pytest.raises(UserError, match=f"the largest has {largest}$"):
        patient_folds(index, largest + 1)
    assert largest >= 2 and set(patient_folds(index, largest)[FOLD]) - {-1} == set(range(largest))
