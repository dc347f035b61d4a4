"""Tests for muratune.data.index: parsing the MURA CSVs and reporting every problem with file and row."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from muratune.data.index import (
    COLUMNS,
    ESCAPES_ROOT,
    LabeledStudy,
    PathParts,
    Problem,
    absolute_image_paths,
    load_index,
    parse_image_line,
    parse_path,
    parse_study_line,
    path_escapes_root,
    read_csv_lines,
    resolve_root,
    scan_index,
    split_fields,
)
from muratune.errors import UserError
from tests.helpers.mura import MuraFixture, edit_lines, make_mura

TRAIN_IMAGES = "train_image_paths.csv"
TRAIN_STUDIES = "train_labeled_studies.csv"
VALID_IMAGES = "valid_image_paths.csv"
VALID_STUDIES = "valid_labeled_studies.csv"


@pytest.fixture()
def mura(tmp_path: Path) -> MuraFixture:
    return make_mura(tmp_path, write_images=False)


def problems_of(fixture: MuraFixture) -> list[Problem]:
    _, problems = scan_index(fixture.base)
    return problems


def assert_one_problem(fixture: MuraFixture, csv_name: str, row: int, text: str) -> Problem:
    """Assert that the scan finds exactly one problem, at ``csv_name:row``, whose reason contains ``text``."""
    problems = problems_of(fixture)
    assert len(problems) == 1, [str(p) for p in problems]
    problem = problems[0]
    assert str(problem).startswith(f"{fixture.csv(csv_name).resolve()}:{row}: ")
    assert text in problem.reason
    return problem


# ------------------------------------------------------------------------------------------------ parsing
def test_columns_dtypes_and_order(mura: MuraFixture) -> None:
    df = load_index(mura.base)
    assert tuple(df.columns) == COLUMNS
    assert list(df["image_path"]) == [image for image, *_ in mura.images]
    assert list(df["study_path"]) == [study for _, study, _, _ in mura.images]
    assert list(df["label"]) == [label for _, _, label, _ in mura.images]
    assert list(df["split"]) == [split for *_, split in mura.images]
    for column in ("label", "view", "study_id"):
        assert pd.api.types.is_integer_dtype(df[column])
    assert set(df["label"]) == {0, 1}


def test_views_patients_and_study_paths(mura: MuraFixture) -> None:
    df = load_index(mura.base)
    assert list(df["view"]) == [int(path.rsplit("image", 1)[1].removesuffix(".png")) for path in df["image_path"]]
    assert df["study_path"].str.endswith("/").all()
    assert df["patient_id"].str.fullmatch(r"patient\d{5}").all()
    first = df.iloc[0]
    assert first["patient_id"] == "patient00001"
    assert first["body_part"] == "XR_ELBOW"
    assert first["study_path"] == "MURA-v1.1/train/XR_ELBOW/patient00001/study1_negative/"
    assert first["study_id"] == 1


def test_label_is_study_label(mura: MuraFixture) -> None:
    df = load_index(mura.base)
    positive = df["study_path"].str.contains("_positive/")
    assert (df.loc[positive, "label"] == 1).all()
    assert (df.loc[~positive, "label"] == 0).all()


@pytest.mark.parametrize("form", ["base", "dataset_dir", "string"])
def test_both_root_forms(mura: MuraFixture, form: str) -> None:
    root = {"base": mura.base, "dataset_dir": mura.dataset_dir, "string": str(mura.dataset_dir)}[form]
    resolved = resolve_root(root)
    assert resolved.base == mura.base.resolve()
    assert resolved.dataset_dir == mura.dataset_dir.resolve()
    df = load_index(root)
    assert df.attrs["root"] == str(mura.base.resolve())
    assert len(df) == len(mura.images)


def test_other_dataset_folder_name(tmp_path: Path) -> None:
    fixture = make_mura(tmp_path, name="SYNTH-MURA", write_images=False)
    for root in (fixture.base, fixture.dataset_dir):
        df = load_index(root)
        assert df["image_path"].str.startswith("SYNTH-MURA/").all()


def test_only_one_split(mura: MuraFixture) -> None:
    df = load_index(mura.base, splits=("valid",))
    assert set(df["split"]) == {"valid"}


def test_absolute_image_paths(tmp_path: Path) -> None:
    fixture = make_mura(tmp_path)
    df = load_index(fixture.base)
    paths = absolute_image_paths(df)
    assert paths.index.equals(df.index)
    assert all(path.is_absolute() and path.is_file() for path in paths)
    assert paths.iloc[0] == tmp_path.resolve() / df["image_path"].iloc[0]


def test_absolute_image_paths_needs_root() -> None:
    with pytest.raises(ValueError, match="root"):
        absolute_image_paths(pd.DataFrame({"image_path": ["a"]}))


def test_problem_str() -> None:
    assert str(Problem("a.csv", 3, "bad")) == "a.csv:3: bad"
    assert str(Problem("a.csv", None, "bad")) == "a.csv: bad"


# ------------------------------------------------------------------------------------------------ root errors
def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nowhere: folder not found"):
        resolve_root(tmp_path / "nowhere")


def test_folder_without_dataset(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no MURA dataset found.*MURA-v1.1/train_image_paths.csv"):
        resolve_root(tmp_path)


def test_missing_csv(mura: MuraFixture) -> None:
    mura.csv(VALID_STUDIES).unlink()
    with pytest.raises(UserError, match=f"{VALID_STUDIES}: file not found"):
        load_index(mura.base)


def test_root_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        resolve_root(tmp_path / "file")


# ------------------------------------------------------------------------------------------------ tolerated
def test_crlf_bom_and_blank_lines_are_accepted(mura: MuraFixture) -> None:
    expected = load_index(mura.base)
    for name in (TRAIN_IMAGES, TRAIN_STUDIES, VALID_IMAGES, VALID_STUDIES):
        lines = mura.csv(name).read_text().splitlines()
        mura.csv(name).write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n\r\n\n  \n")
    df, problems = scan_index(mura.base)
    assert problems == []
    pd.testing.assert_frame_equal(df, expected)


def test_study_path_without_trailing_slash(mura: MuraFixture) -> None:
    edit_lines(mura.csv(TRAIN_STUDIES), lambda lines: [line.replace("/,", ",") for line in lines])
    df = load_index(mura.base)
    assert df["study_path"].str.endswith("/").all()


# ------------------------------------------------------------------------------------------------ problems
@pytest.mark.parametrize(("csv_name", "header"), [(TRAIN_IMAGES, "path"), (TRAIN_STUDIES, "study,label")])
def test_header_row(mura: MuraFixture, csv_name: str, header: str) -> None:
    edit_lines(mura.csv(csv_name), lambda lines: [header, *lines])
    assert_one_problem(mura, csv_name, 1, "looks like a header row")


def test_duplicate_image_row(mura: MuraFixture) -> None:
    edit_lines(mura.csv(TRAIN_IMAGES), lambda lines: [*lines[:3], lines[1], *lines[3:]])
    assert_one_problem(mura, TRAIN_IMAGES, 4, "duplicate image (first listed at row 2)")
    df, _ = scan_index(mura.base)
    assert len(df) == len(mura.images)


def test_duplicate_study_row(mura: MuraFixture) -> None:
    edit_lines(mura.csv(VALID_STUDIES), lambda lines: [*lines, lines[0]])
    n_rows = len(mura.csv(VALID_STUDIES).read_text().splitlines())
    assert_one_problem(mura, VALID_STUDIES, n_rows, "duplicate study (first listed at row 1)")


@pytest.mark.parametrize(
    ("csv_name", "edit", "text"),
    [
        (TRAIN_IMAGES, lambda line: line + ",1", "expected 1 column (an image path), found 2"),
        (TRAIN_STUDIES, lambda line: line.split(",")[0], "expected 2 columns (study path, label), found 1"),
        (TRAIN_STUDIES, lambda line: line + ",x", "expected 2 columns (study path, label), found 3"),
        (TRAIN_STUDIES, lambda line: line[:-1] + "2", "label '2' must be 0 or 1"),
        (TRAIN_STUDIES, lambda line: line[:-1] + "yes", "label 'yes' must be 0 or 1"),
        (TRAIN_STUDIES, lambda line: line[:-1] + "1.0", "label '1.0' must be 0 or 1"),
    ],
)
def test_malformed_rows(mura: MuraFixture, csv_name: str, edit, text: str) -> None:
    edit_lines(mura.csv(csv_name), lambda lines: [*lines[:2], edit(lines[2]), *lines[3:]])
    problems = problems_of(mura)
    located = [p for p in problems if p.file == str(mura.csv(csv_name).resolve()) and p.row == 3]
    assert len(located) == 1 and text in located[0].reason, [str(p) for p in problems]


@pytest.mark.parametrize(
    "bad_path",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "MURA-v1.1/train/../../../etc/passwd",
        "MURA-v1.1\\..\\..\\secret.png",
        "C:/Windows/win.ini",
        "~/image1.png",
    ],
)
def test_path_escaping_the_root(mura: MuraFixture, bad_path: str) -> None:
    edit_lines(mura.csv(TRAIN_IMAGES), lambda lines: [bad_path, *lines])
    assert_one_problem(mura, TRAIN_IMAGES, 1, ESCAPES_ROOT)


def test_study_path_escaping_the_root(mura: MuraFixture) -> None:
    edit_lines(mura.csv(TRAIN_STUDIES), lambda lines: ["../../etc/,1", *lines])
    assert_one_problem(mura, TRAIN_STUDIES, 1, ESCAPES_ROOT)


@pytest.mark.parametrize(
    ("old", "new", "text"),
    [
        ("study1_negative/image1.png", "study1/image1.png", "study folder 'study1' does not match"),
        ("patient00001/", "p00001/", "patient folder 'p00001' does not match"),
        ("image1.png", "img1.png", "image file name 'img1.png' does not match"),
        ("MURA-v1.1/", "MURA-v1.0/", "should start with the dataset folder 'MURA-v1.1/'"),
        ("/image1.png", "/extra/image1.png", "does not match <dataset>/<split>/XR_<PART>"),
    ],
)
def test_image_path_not_matching_the_layout(mura: MuraFixture, old: str, new: str, text: str) -> None:
    edit_lines(mura.csv(TRAIN_IMAGES), lambda lines: [lines[0].replace(old, new), *lines[1:]])
    assert_one_problem(mura, TRAIN_IMAGES, 1, text)


def test_unknown_body_part(mura: MuraFixture) -> None:
    edit_lines(
        mura.csv(TRAIN_IMAGES),
        lambda lines: [*lines, "MURA-v1.1/train/XR_KNEE/patient09999/study1_negative/image1.png"],
    )
    n_rows = len(mura.csv(TRAIN_IMAGES).read_text().splitlines())
    assert_one_problem(mura, TRAIN_IMAGES, n_rows, "unknown body part folder 'XR_KNEE'")


def test_label_disagreeing_with_folder_name(mura: MuraFixture) -> None:
    def flip(lines: list[str]) -> list[str]:
        path, label = lines[0].split(",")
        return [f"{path},{1 - int(label)}", *lines[1:]]

    edit_lines(mura.csv(TRAIN_STUDIES), flip)
    problems = problems_of(mura)
    assert str(problems[0]).startswith(f"{mura.csv(TRAIN_STUDIES).resolve()}:1: label 1 disagrees")
    assert "study1_negative" in problems[0].reason and "(expected 0)" in problems[0].reason
    # Its images then point at a study missing from the labels: one problem per image row.
    assert all("is not in train_labeled_studies.csv" in p.reason for p in problems[1:])


def test_image_of_unlabeled_study(mura: MuraFixture) -> None:
    edit_lines(mura.csv(VALID_STUDIES), lambda lines: lines[1:])
    problems = problems_of(mura)
    study = mura.studies[[s for *_, s in mura.studies].index("valid")][0]
    n_images = sum(1 for _, s, _, _ in mura.images if s == study)
    assert len(problems) == n_images
    for row, problem in enumerate(problems, start=1):
        assert str(problem).startswith(f"{mura.csv(VALID_IMAGES).resolve()}:{row}: study {study} is not in")
        assert VALID_STUDIES in problem.reason


def test_labeled_study_without_images(mura: MuraFixture) -> None:
    study = mura.studies[0][0]
    edit_lines(mura.csv(TRAIN_IMAGES), lambda lines: [line for line in lines if not line.startswith(study)])
    assert_one_problem(mura, TRAIN_STUDIES, 1, "study has no images in train_image_paths.csv")


def test_split_folder_not_matching_the_csv(mura: MuraFixture) -> None:
    edit_lines(mura.csv(VALID_IMAGES), lambda lines: [lines[0].replace("/valid/", "/train/"), *lines[1:]])
    problems = problems_of(mura)
    assert str(problems[0]).startswith(f"{mura.csv(VALID_IMAGES).resolve()}:1: split folder 'train' does not match")


def test_not_utf8(mura: MuraFixture) -> None:
    data = mura.csv(TRAIN_IMAGES).read_bytes()
    mura.csv(TRAIN_IMAGES).write_bytes(b"\xff\xfe garbage\n" + data)
    assert_one_problem(mura, TRAIN_IMAGES, 1, "not valid UTF-8")


def test_all_problems_are_collected(mura: MuraFixture) -> None:
    n_train_images = sum(split == "train" for *_, split in mura.images)
    edit_lines(mura.csv(TRAIN_IMAGES), lambda lines: ["path", "../x", *lines, "garbage"])
    edit_lines(mura.csv(VALID_STUDIES), lambda lines: [*lines, "a,b,c"])
    problems = problems_of(mura)
    assert [(Path(p.file).name, p.row) for p in problems] == [
        (TRAIN_IMAGES, 1),
        (TRAIN_IMAGES, 2),
        (TRAIN_IMAGES, n_train_images + 3),
        (VALID_STUDIES, sum(split == "valid" for *_, split in mura.studies) + 1),
    ]


def test_load_index_raises_first_problem(mura: MuraFixture) -> None:
    edit_lines(mura.csv(TRAIN_IMAGES), lambda lines: ["path", "../x", *lines])
    with pytest.raises(UserError) as info:
        load_index(mura.base)
    message = str(info.value)
    assert message.startswith(f"{mura.csv(TRAIN_IMAGES).resolve()}:1: looks like a header row")
    assert message.endswith("(+1 more; run `muratune data check`)")
    assert "\n" not in message


def test_load_index_single_problem_has_no_suffix(mura: MuraFixture) -> None:
    edit_lines(mura.csv(TRAIN_IMAGES), lambda lines: ["../x", *lines])
    with pytest.raises(UserError, match=f"{ESCAPES_ROOT}$"):
        load_index(mura.base)


# ------------------------------------------------------------------------------------------------ properties
@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_line_parses_or_gives_a_reason(line: str) -> None:
    fields = split_fields(line)
    image = parse_image_line(fields, "MURA-v1.1", "train")
    assert isinstance(image, str) or isinstance(image[1], PathParts)
    study = parse_study_line(fields, "MURA-v1.1", "train")
    assert isinstance(study, (str, LabeledStudy))


@settings(max_examples=200, deadline=None)
@given(st.binary())
def test_any_bytes_read_as_lines_or_problems(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("csv") / "train_image_paths.csv"
    path.write_bytes(data)
    problems: list[Problem] = []
    lines = list(read_csv_lines(path, problems))
    for row, line in lines:
        assert row >= 1 and line.strip() and "\n" not in line
        parse_image_line(split_fields(line), "MURA-v1.1", "train")
    assert all(p.row is not None and p.row >= 1 for p in problems)


_segment = st.text(alphabet=st.characters(blacklist_characters="/\\"), min_size=0, max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.lists(_segment, max_size=4), st.lists(_segment, max_size=4), st.sampled_from(["/", "\\"]))
def test_dotdot_paths_are_always_refused(before: list[str], after: list[str], sep: str) -> None:
    path = sep.join([*before, "..", *after])
    assert path_escapes_root(path)
    assert parse_path(path, "MURA-v1.1", "train", is_study=False) == ESCAPES_ROOT
    assert parse_image_line([path], "MURA-v1.1", "train") == ESCAPES_ROOT


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1).map(lambda s: "/" + s))
def test_absolute_paths_are_always_refused(path: str) -> None:
    assert parse_path(path, "MURA-v1.1", "train", is_study=False) == ESCAPES_ROOT


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["train", "valid"]),
    st.sampled_from(["XR_ELBOW", "XR_WRIST"]),
    st.integers(0, 10**6),
    st.integers(1, 99),
    st.booleans(),
    st.integers(1, 99),
)
def test_valid_paths_round_trip(split: str, part: str, patient: int, study: int, positive: bool, view: int) -> None:
    folder = f"study{study}_{'positive' if positive else 'negative'}"
    path = f"MURA-v1.1/{split}/{part}/patient{patient:05d}/{folder}/image{view}.png"
    parts = parse_path(path, "MURA-v1.1", split, is_study=False)
    assert parts == PathParts(split, part, f"patient{patient:05d}", folder, study, int(positive), view)
