"""Tests for muratune.data.check and the `muratune data check` command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from muratune.constants import BODY_PARTS, short_part
from muratune.data import check as check_module
from muratune.data.check import check_dataset, count_table
from muratune.data.index import load_index
from tests.helpers.mura import MURA_V11_COUNTS, MuraFixture, edit_lines, make_mura, make_mura_csvs, write_png

TRAIN_IMAGES = "train_image_paths.csv"
TRAIN_STUDIES = "train_labeled_studies.csv"
VALID_STUDIES = "valid_labeled_studies.csv"


@pytest.fixture()
def mura(tmp_path: Path) -> MuraFixture:
    return make_mura(tmp_path)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "muratune.cli", "data", "check", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


# ------------------------------------------------------------------------------------------------ good data
def test_good_dataset_has_no_problems(mura: MuraFixture) -> None:
    for options in ({"csv_only": True}, {}, {"deep": True, "progress": False}):
        report = check_dataset(mura.base, **options)
        assert report.problems == [] and report.ok, options


def test_table_counts(mura: MuraFixture) -> None:
    table = check_dataset(mura.base).table
    for split in ("train", "valid"):
        studies = [(study, label) for study, label, s in mura.studies if s == split]
        assert table.loc["total", (split, "studies")] == len(studies)
        assert table.loc["total", (split, "abnormal")] == sum(label for _, label in studies)
        assert table.loc["total", (split, "normal")] == sum(1 - label for _, label in studies)
        assert table.loc["total", (split, "images")] == sum(s == split for *_, s in mura.images)
        elbow = [image for image, _, _, s in mura.images if s == split and "/XR_ELBOW/" in image]
        assert table.loc["elbow", (split, "images")] == len(elbow)
    assert list(table.index) == [short_part(part) for part in BODY_PARTS] + ["total"]


def test_real_mura_counts_are_reproduced_csv_only(tmp_path: Path) -> None:
    fixture = make_mura_csvs(tmp_path)
    report = check_dataset(fixture.base, csv_only=True)
    assert report.problems == []
    table = report.table
    for split, per_part in MURA_V11_COUNTS.items():
        for part, (normal, abnormal, images) in per_part.items():
            row = table.loc[short_part(part)]
            assert (row[(split, "normal")], row[(split, "abnormal")], row[(split, "images")]) == (
                normal,
                abnormal,
                images,
            )
    assert table.loc["total", ("train", "studies")] == 13_457
    assert table.loc["total", ("train", "images")] == 36_808
    assert table.loc["total", ("valid", "studies")] == 1_199
    assert table.loc["total", ("valid", "images")] == 3_197
    text = report.format_table()
    assert "13,457" in text and "36,808" in text and "1,199" in text and "3,197" in text


def test_format_table(mura: MuraFixture) -> None:
    text = check_dataset(mura.base).format_table()
    lines = text.splitlines()
    assert "MURA-v1.1" in lines[0]
    assert "train" in lines[1] and "valid" in lines[1]
    assert lines[2].split() == ["body", "part", *(["normal", "abnormal", "studies", "images"] * 2)]
    assert [line.split()[0] for line in lines[3:]] == [short_part(p) for p in BODY_PARTS] + ["total"]
    assert len({len(line) for line in lines[1:]}) == 1


def test_count_table_of_empty_index(mura: MuraFixture) -> None:
    empty = load_index(mura.base).iloc[0:0]
    assert int(count_table(empty).to_numpy().sum()) == 0


# ------------------------------------------------------------------------------------------------ problems
def test_missing_image(mura: MuraFixture) -> None:
    image = mura.base / mura.images[4][0]
    image.unlink()
    report = check_dataset(mura.base)
    assert [str(p) for p in report.problems] == [
        f"{mura.csv(TRAIN_IMAGES).resolve()}:5: image file not found: {image.resolve()}"
    ]
    assert check_dataset(mura.base, csv_only=True).problems == []


def test_missing_study_folder(mura: MuraFixture) -> None:
    study = mura.base / mura.studies[0][0]
    for image in study.iterdir():
        image.unlink()
    study.rmdir()
    n_images = sum(s == mura.studies[0][0] for _, s, _, _ in mura.images)
    report = check_dataset(mura.base)
    assert [p.row for p in report.problems] == list(range(1, n_images + 1))
    assert all("image file not found" in p.reason for p in report.problems)


def test_unlisted_image(mura: MuraFixture) -> None:
    study = mura.base / mura.studies[0][0]
    write_png(study / "image9.png")
    (study / "._image9.png").write_bytes(b"macOS resource fork")
    (study / "notes.txt").write_text("not an image")
    report = check_dataset(mura.base)
    assert [str(p) for p in report.problems] == [
        f"{(study / 'image9.png').resolve()}: image file is not listed in {TRAIN_IMAGES}"
    ]
    assert check_dataset(mura.base, csv_only=True).problems == []


def test_patient_in_both_splits(tmp_path: Path) -> None:
    fixture = make_mura(tmp_path, write_images=False)
    valid_study = next(study for study, _, split in fixture.studies if split == "valid")
    valid_patient = valid_study.split("/")[3]
    train_study = next(study for study, _, split in fixture.studies if split == "train")
    train_patient = train_study.split("/")[3]
    for name in ("valid_image_paths.csv", VALID_STUDIES):
        edit_lines(fixture.csv(name), lambda lines: [line.replace(valid_patient, train_patient) for line in lines])
    report = check_dataset(fixture.base, csv_only=True)
    assert [str(p) for p in report.problems] == [
        f"{fixture.csv(VALID_STUDIES).resolve()}:1: patient {train_patient} also has studies in the train split; "
        "patients must not cross splits"
    ]


def test_index_problems_are_included(mura: MuraFixture) -> None:
    edit_lines(mura.csv(TRAIN_STUDIES), lambda lines: ["study,label", *lines])
    report = check_dataset(mura.base)
    assert [str(p) for p in report.problems] == [
        f"{mura.csv(TRAIN_STUDIES).resolve()}:1: looks like a header row; MURA CSVs have no header"
    ]


def corrupt(path: Path, kind: str) -> None:
    if kind == "garbage":
        path.write_bytes(b"this is not a png")
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    else:
        path.write_bytes(b"")


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty"])
def test_check_finds_unreadable_images(mura: MuraFixture, kind: str) -> None:
    image = mura.base / mura.images[2][0]
    corrupt(image, kind)
    for deep in (False, True):  # without --deep the first and last bytes are enough to find these
        report = check_dataset(mura.base, deep=deep, progress=False)
        assert len(report.problems) == 1
        problem = str(report.problems[0])
        assert problem.startswith(f"{mura.csv(TRAIN_IMAGES).resolve()}:3: unreadable image {image.resolve()}: ")


def test_deep_does_not_decode_missing_images_twice(mura: MuraFixture) -> None:
    (mura.base / mura.images[0][0]).unlink()
    report = check_dataset(mura.base, deep=True, progress=False)
    assert len(report.problems) == 1 and "image file not found" in report.problems[0].reason


def test_deep_with_a_pool_keeps_csv_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(check_module, "MIN_IMAGES_FOR_POOL", 2)
    fixture = make_mura(tmp_path, patients_per_part=4)
    broken = [5, 17, 30, 31, len(fixture.images) - 1]
    for position in broken:
        corrupt(fixture.base / fixture.images[position][0], "garbage")
    report = check_dataset(fixture.base, deep=True, workers=2, progress=False)
    expected = [str((fixture.base / fixture.images[position][0]).resolve()) for position in broken]
    assert [p.reason.split()[2].removesuffix(":") for p in report.problems] == expected


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_good_dataset(mura: MuraFixture) -> None:
    result = run_cli(str(mura.base))
    assert result.returncode == 0, result.stderr
    assert "body part" in result.stdout and "total" in result.stdout and "OK: no problems" in result.stdout


def test_cli_deep_on_the_dataset_folder(mura: MuraFixture) -> None:
    result = run_cli(str(mura.dataset_dir), "--deep")
    assert result.returncode == 0, result.stderr


def test_cli_missing_image(mura: MuraFixture) -> None:
    image = mura.base / mura.images[0][0]
    image.unlink()
    result = run_cli(str(mura.base))
    assert result.returncode == 2
    assert f"{TRAIN_IMAGES}:1: image file not found: {image.resolve()}" in result.stderr
    assert "1 problem(s) found" in result.stderr
    assert "Traceback" not in result.stderr
    assert run_cli(str(mura.base), "--csv-only").returncode == 0


def test_cli_flipped_label(mura: MuraFixture) -> None:
    edit_lines(mura.csv(TRAIN_STUDIES), lambda lines: [lines[0][:-1] + str(1 - int(lines[0][-1])), *lines[1:]])
    result = run_cli(str(mura.base), "--csv-only")
    assert result.returncode == 2
    assert f"{TRAIN_STUDIES}:1: label 1 disagrees with the study folder name 'study1_negative'" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_missing_dataset(tmp_path: Path) -> None:
    result = run_cli(str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"muratune: error: {tmp_path / 'nowhere'}: folder not found; "
        "expected a MURA dataset (the folder holding MURA-v1.1/)"
    ]


@pytest.mark.parametrize("split", ["valid", "train"])
def test_an_empty_split_is_a_problem(mura: MuraFixture, split: str) -> None:
    for name in (f"{split}_image_paths.csv", f"{split}_labeled_studies.csv"):
        mura.csv(name).write_text("")
    before = {p: p.read_bytes() for p in mura.dataset_dir.glob("*.csv")}
    report = check_dataset(mura.base, csv_only=True)
    assert not report.ok
    [problem] = [p for p in report.problems if "has no studies" in p.reason]
    assert problem.file == str(mura.csv(f"{split}_labeled_studies.csv")) and f"the {split} split" in problem.reason
    assert {p: p.read_bytes() for p in mura.dataset_dir.glob("*.csv")} == before
