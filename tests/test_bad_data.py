"""Every bad-data case through every data-reading command: `data check`, `data cache`, `search` and `predict`."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from muratune import layout
from muratune.cli import main
from muratune.data.cache import ImageCache
from muratune.search import job as search_job
from muratune.search import run as search_run
from tests.helpers.cli import assert_one_line_error, run
from tests.helpers.ensemble import make_ensemble
from tests.helpers.files import bomb_png, tree_digest
from tests.helpers.mura import TRAIN_IMAGES, TRAIN_STUDIES, MuraFixture, edit_lines, make_mura
from tests.helpers.search import DEMO_CONFIG, tiny_overrides

GRAY = 200  # the gray level of the readable-but-unusual images below, which must arrive in the cache as is

# What a command does with a case:
OK = "ok"  # exit 0, nothing to say
FAIL = "fail"  # exit 2, one line naming the file (and row) and the reason, even with --skip-bad-images
SKIPPABLE = "skippable"  # exit 2 like FAIL; with --skip-bad-images exit 0, the image named as excluded/unreadable
WARN = "warn"  # exit 0 with a warning naming the row (predict only)


# ------------------------------------------------------------------------------------------------ the cases
def _single_view_train_image(fixture: MuraFixture) -> tuple[str, str]:
    """The first train image whose study has no other view (so skipping it leaves the study out in predict)."""
    views: dict[str, int] = {}
    for _, study, _, _ in fixture.images:
        views[study] = views.get(study, 0) + 1
    image, study = next((i, s) for i, s, _, split in fixture.images if split == "train" and views[s] == 1)
    return image, study


def _save(path: Path, image: Image.Image) -> None:
    image.save(path, format="PNG")


def _gray16(path: Path) -> None:
    _save(path, Image.fromarray(np.full((10, 12), GRAY * 257, dtype=np.uint16)))  # full 16-bit range: / 257


def _rgba(path: Path) -> None:
    _save(path, Image.new("RGBA", (12, 10), (GRAY, GRAY, GRAY, 255)))


def _palette(path: Path) -> None:
    image = Image.new("P", (12, 10), 3)
    image.putpalette([0, 0, 0] * 3 + [GRAY, GRAY, GRAY] + [0, 0, 0] * 252)
    _save(path, image)


def _huge(path: Path) -> None:
    _save(path, Image.new("L", (6_000, 6_000), GRAY))  # 36 megapixels, under the cap; a constant image compresses


def _bomb(path: Path) -> None:
    path.write_bytes(bomb_png())  # 164 KB declaring 13000 x 13000 pixels (169 megapixels, above the 40-megapixel cap)


def _other_format(fmt: str) -> Callable[[Path], None]:
    """Write the image in ``fmt`` (BMP, TIFF) under its .png name: refused by every command, whatever the name."""

    def write(path: Path) -> None:
        Image.new("L", (12, 10), GRAY).save(path, format=fmt)

    return write


def _symlink_loop(path: Path) -> None:
    path.unlink()
    path.symlink_to(path.name)  # points at itself: every open fails with ELOOP


def _unlisted_symlink_loop(fixture: MuraFixture, study: str) -> None:
    (fixture.base / study / "image9.png").symlink_to("image9.png")


def _one_pixel(path: Path) -> None:
    _save(path, Image.new("L", (1, 1), GRAY))


def _crlf(fixture: MuraFixture) -> None:
    for table in fixture.dataset_dir.glob("*.csv"):
        table.write_bytes(table.read_bytes().replace(b"\n", b"\r\n"))


def _rename_part(fixture: MuraFixture, study: str, new_part: str) -> None:
    old_part = study.split("/")[2]
    new_study = study.replace(f"/{old_part}/", f"/{new_part}/")
    for name in (TRAIN_IMAGES, TRAIN_STUDIES):
        edit_lines(fixture.csv(name), lambda lines: [line.replace(study, new_study) for line in lines])
    (fixture.base / new_study).parent.mkdir(parents=True)
    os.replace(fixture.base / study, fixture.base / new_study)


def _flip_label(fixture: MuraFixture, study: str) -> None:
    def flip(line: str) -> str:
        path, label = line.split(",")
        return f"{path},{1 - int(label)}" if path == study else line

    edit_lines(fixture.csv(TRAIN_STUDIES), lambda lines: [flip(line) for line in lines])


@dataclass(frozen=True)
class Case:
    """One kind of bad (or merely unusual) data, with what each command must do about it."""

    damage: Callable[[MuraFixture, str, str], None]  # (fixture, image path, study path) -> None
    expect: dict[str, str]  # command -> OK, FAIL, SKIPPABLE or WARN
    fragments: Callable[[str, str], list[str]]  # (image path, study path) -> text the message must hold
    gray: bool = False  # a readable image of gray level GRAY replaced the target image
    extra: dict[str, list[str]] = field(default_factory=dict)  # command -> more text its message must hold


def _image_case(writer: Callable[[Path], None]) -> Case:
    return Case(lambda f, image, study: writer(f.base / image), _all(OK), lambda image, study: [], gray=True)


def _all(outcome: str, **others: str) -> dict[str, str]:
    return {"check": outcome, "cache": outcome, "search": outcome, "predict": outcome, **others}


CASES: dict[str, Case] = {
    "truncated PNG": Case(
        lambda f, image, study: (f.base / image).write_bytes((f.base / image).read_bytes()[:60]),
        _all(SKIPPABLE, check=FAIL),
        lambda image, study: [image, "truncated"],
    ),
    "zero-byte file": Case(
        lambda f, image, study: (f.base / image).write_bytes(b""),
        _all(SKIPPABLE, check=FAIL),
        lambda image, study: [image, "empty file"],
    ),
    "text file named .png": Case(
        lambda f, image, study: (f.base / image).write_text("patient notes, not an image\n"),
        _all(SKIPPABLE, check=FAIL),
        lambda image, study: [image, "not a"],
    ),
    "missing file": Case(
        lambda f, image, study: (f.base / image).unlink(),
        _all(SKIPPABLE, check=FAIL),
        lambda image, study: [image, "not found"],
    ),
    "header row": Case(
        lambda f, image, study: edit_lines(f.csv(TRAIN_IMAGES), lambda lines: ["path", *lines]),
        _all(FAIL, predict=WARN),
        lambda image, study: [f"{TRAIN_IMAGES}:1", "header row"],
    ),
    "CRLF line endings": Case(lambda f, image, study: _crlf(f), _all(OK), lambda image, study: []),
    "duplicate row": Case(
        lambda f, image, study: edit_lines(f.csv(TRAIN_IMAGES), lambda lines: [*lines, image]),
        _all(FAIL, predict=WARN),
        lambda image, study: [TRAIN_IMAGES, "duplicate"],
    ),
    "label disagrees with folder": Case(
        lambda f, image, study: _flip_label(f, study),
        _all(FAIL, predict=OK),  # an image list has no labels
        lambda image, study: [TRAIN_STUDIES, study.split("/")[4], "disagrees"],
    ),
    "unknown body part": Case(
        lambda f, image, study: _rename_part(f, study, "XR_KNEE"),
        _all(FAIL, predict=WARN),
        lambda image, study: ["XR_KNEE", "unknown body part"],
    ),
    "study with no images": Case(
        lambda f, image, study: edit_lines(f.csv(TRAIN_IMAGES), lambda lines: [x for x in lines if x != image]),
        _all(FAIL, predict=OK),  # an image list names no studies of its own
        lambda image, study: [TRAIN_STUDIES, "no images"],
    ),
    "1x1 image": _image_case(_one_pixel),
    "6,000 x 6,000 image": _image_case(_huge),
    "13,000 x 13,000 PNG bomb": Case(
        lambda f, image, study: _bomb(f.base / image),
        _all(SKIPPABLE, check=FAIL),
        lambda image, study: [image, "image too large (13000x13000 pixels"],
    ),
    "BMP named .png": Case(
        lambda f, image, study: _other_format("BMP")(f.base / image),
        _all(SKIPPABLE, check=FAIL),
        lambda image, study: [image, "not a PNG, JPEG or DICOM file"],
    ),
    "TIFF named .png": Case(
        lambda f, image, study: _other_format("TIFF")(f.base / image),
        _all(SKIPPABLE, check=FAIL),
        lambda image, study: [image, "not a PNG, JPEG or DICOM file"],
    ),
    "listed image is a symlink loop": Case(
        lambda f, image, study: _symlink_loop(f.base / image),
        _all(SKIPPABLE, check=FAIL),
        lambda image, study: [image, "Too many levels of symbolic links"],
    ),
    "unlisted symlink loop in a study folder": Case(
        lambda f, image, study: _unlisted_symlink_loop(f, study),
        _all(OK, check=FAIL),  # only `data check` compares the folders with the CSVs
        lambda image, study: [f"{study}image9.png", "not listed"],
    ),
    "16-bit grayscale PNG": _image_case(_gray16),
    "RGBA PNG": _image_case(_rgba),
    "palette PNG": _image_case(_palette),
    "path escaping the root": Case(
        lambda f, image, study: edit_lines(f.csv(TRAIN_IMAGES), lambda lines: [*lines, "../../etc/passwd"]),
        _all(FAIL),
        lambda image, study: [TRAIN_IMAGES, "escapes the dataset root"],
    ),
}


@dataclass
class Damaged:
    """A tiny dataset with one case applied, and where."""

    fixture: MuraFixture
    image: str
    study: str
    case: Case

    @property
    def root(self) -> str:
        return str(self.fixture.base)

    def fragments(self) -> list[str]:
        return self.case.fragments(self.image, self.study)


def damaged(tmp_path: Path, name: str) -> Damaged:
    fixture = make_mura(tmp_path / "data")
    image, study = _single_view_train_image(fixture)
    CASES[name].damage(fixture, image, study)
    return Damaged(fixture, image, study, CASES[name])


# ------------------------------------------------------------------------------------------------ running
def assert_outcome(code: int, err: str, outcome: str, fragments: list[str]) -> None:
    if outcome in (FAIL, SKIPPABLE):
        assert code == 2, err
        assert_one_line_error(err, fragments)
    else:
        assert code == 0, err
        assert "Traceback" not in err and "error" not in err, err
        if outcome == WARN:
            warning = next(line for line in err.splitlines() if line.startswith("muratune: warning:"))
            assert all(fragment in warning for fragment in fragments), (fragments, err)


# ------------------------------------------------------------------------------------------------ data check
@pytest.mark.parametrize("name", list(CASES))
def test_data_check(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    data = damaged(tmp_path, name)
    before = tree_digest(data.fixture.base)
    for deep in ([], ["--deep"]):
        code, out, err = run(["data", "check", data.root, *deep], capsys)
        assert tree_digest(data.fixture.base) == before
        assert "Traceback" not in err, err
        if data.case.expect["check"] == OK:
            assert code == 0 and "OK: no problems" in out, err
        else:
            # `data check` lists every problem (one line each, file:row: reason) and a count, then exits 2.
            assert code == 2, (deep, out, err)
            assert err.strip().splitlines()[-1].endswith(f"problem(s) found in {data.root}")
            assert any(all(f in line for f in data.fragments()) for line in err.splitlines()), (deep, err)


# ------------------------------------------------------------------------------------------------ data cache
def _cache_args(data: Damaged, cache_dir: Path) -> list[str]:
    return ["data", "cache", data.root, "--size", "16", "--cache-dir", str(cache_dir), "--workers", "1"]


@pytest.mark.parametrize("name", list(CASES))
def test_data_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    data = damaged(tmp_path, name)
    outcome = data.case.expect["cache"]
    before = tree_digest(data.fixture.base)
    code, out, err = run(_cache_args(data, tmp_path / "cache"), capsys)
    assert_outcome(code, err, outcome, data.fragments())
    assert tree_digest(data.fixture.base) == before
    if outcome != OK:
        assert _snapshot(tmp_path / "cache") == {}, "no cache, nor a half-written one, is left"
    code, out, err = run([*_cache_args(data, tmp_path / "cache"), "--skip-bad-images"], capsys)
    if outcome == SKIPPABLE:
        assert code == 0, err
        [line] = err.strip().splitlines()
        assert line.startswith("excluded: ") and data.image in line
        cache = ImageCache.open(Path(out.split("cache: ")[1].split(" (")[0]))
        assert [item["image_path"] for item in cache.excluded] == [data.image]
    elif outcome == FAIL:
        assert code == 2  # --skip-bad-images is about images, not about the CSVs
        assert_one_line_error(err, data.fragments())
    else:
        assert code == 0, err
        if data.case.gray:
            cache = ImageCache.open(Path(out.split("cache: ")[1].split(" (")[0]))
            [row] = cache.rows_for([data.image])
            assert cache.images[row][8, 8] == GRAY, "read correctly: 16-bit scaled, RGBA and palette converted"


def test_a_cache_built_with_skip_bad_images_is_refused_without_it(tmp_path, capsys) -> None:
    data = damaged(tmp_path, "truncated PNG")
    assert run([*_cache_args(data, tmp_path / "cache"), "--skip-bad-images"], capsys)[0] == 0
    code, _, err = run(_cache_args(data, tmp_path / "cache"), capsys)
    assert code == 2
    assert_one_line_error(err, [data.image, "truncated", "--skip-bad-images"])


def test_a_cache_error_leaves_existing_caches_untouched(tmp_path, capsys) -> None:
    fixture = make_mura(tmp_path / "data")
    image, _ = _single_view_train_image(fixture)
    args = ["data", "cache", str(fixture.base), "--size", "16", "--cache-dir", str(tmp_path / "cache")]
    assert run(args, capsys)[0] == 0
    before = _snapshot(tmp_path / "cache")
    (fixture.base / image).write_bytes(b"")
    code, _, err = run(args, capsys)
    assert code == 2
    assert_one_line_error(err, [image, "empty file"])
    assert _snapshot(tmp_path / "cache") == before


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``folder`` (lock files aside) with its mtime and content."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


# ------------------------------------------------------------------------------------------------ search
class RayWouldStart(Exception):
    """Raised instead of building the Tuner: the data got past every check and the experiment folder is written."""


@pytest.fixture()
def no_ray(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Run `search` without Ray: record when it would connect, and stop where the Tuner would be built."""
    calls: list[str] = []

    def connect(*args: object, **kwargs: object) -> bool:
        calls.append("connect_ray")
        return False

    def build(*args: object, **kwargs: object) -> None:
        raise RayWouldStart

    monkeypatch.setattr(search_job, "connect_ray", connect)
    monkeypatch.setattr(search_job, "check_cluster_resources", lambda *args, **kwargs: None)
    monkeypatch.setattr(search_run, "create_tuner", build)
    return calls


def _search_args(root: str, storage: Path, *extra: str, **settings: object) -> list[str]:
    sets = {"storage": storage, "name": "bad", "data.image_size": 32, "data.cache_dir": storage.parent / "cache"}
    args = ["search", str(DEMO_CONFIG), "--data", root, *extra]
    for key, value in {**sets, **settings}.items():
        args += ["--set", f"{key}={value}"]
    return args


@pytest.mark.parametrize("name", list(CASES))
def test_search_stops_on_bad_data_before_ray_and_before_the_experiment_folder(tmp_path, capsys, no_ray, name):
    data = damaged(tmp_path, name)
    storage = tmp_path / "runs"
    outcome = data.case.expect["search"]
    for extra in ([], ["--skip-bad-images"]):
        if outcome == OK or (outcome == SKIPPABLE and extra):
            capsys.readouterr()
            with pytest.raises(RayWouldStart):
                main(_search_args(data.root, storage, *extra, name=f"ok{len(extra)}"))
            info = json.loads((storage / f"ok{len(extra)}" / layout.CACHE_JSON).read_text())
            excluded = [item["image_path"] for item in info["excluded"]]
            assert excluded == ([data.image] if outcome == SKIPPABLE else [])
            assert info["images"] == len(data.fixture.images) - len(excluded)
            if data.case.gray:
                cache = ImageCache.open(Path(info["cache"]))
                assert cache.images[cache.rows_for([data.image])[0]][16, 16] == GRAY
        else:
            code, _, err = run(_search_args(data.root, storage, *extra), capsys)
            assert code == 2
            assert_one_line_error(err, data.fragments())
            assert no_ray == [], "the data is checked before Ray is started"
            assert not (storage / "bad").exists(), "no experiment folder is created for a search that cannot start"


def test_search_with_overwrite_on_bad_data_leaves_the_existing_experiment_untouched(tmp_path, capsys, no_ray):
    data = damaged(tmp_path, "truncated PNG")
    exp = tmp_path / "runs" / "bad"
    exp.mkdir(parents=True)
    (exp / layout.RESOLVED_CONFIG).write_text("name: bad\n")
    (exp / layout.SUMMARY_CSV).write_text("trial_id,state\nabc,COMPLETE\n")
    before = _snapshot(exp)
    code, _, err = run([*_search_args(data.root, tmp_path / "runs"), "--overwrite"], capsys)
    assert code == 2
    assert_one_line_error(err, [data.image, "truncated", "--skip-bad-images"])
    assert _snapshot(exp) == before
    assert no_ray == []


def test_search_with_overwrite_and_too_many_gpus_leaves_the_existing_experiment_untouched(
    tmp_path, capsys, monkeypatch
):
    """The GPU check needs the cluster, so it runs once Ray is up, but still before the folder is replaced."""
    import ray

    fixture = make_mura(tmp_path / "data")
    exp = tmp_path / "runs" / "bad"
    exp.mkdir(parents=True)
    (exp / layout.RESOLVED_CONFIG).write_text("name: bad\n")
    before = _snapshot(exp)
    monkeypatch.setattr(search_job, "connect_ray", lambda *args, **kwargs: True)  # as if a local Ray had been started
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    args = _search_args(str(fixture.base), tmp_path / "runs", **{"resources.gpus_per_trial": 1})
    code, _, err = run([*args, "--overwrite"], capsys)
    assert code == 2
    assert_one_line_error(err, ["resources.gpus_per_trial", "GPU(s) per trial requested", "cluster has 0"])
    assert _snapshot(exp) == before


def test_search_cli_reports_a_truncated_png_in_one_line_without_starting_ray(tmp_path) -> None:
    """The real command in a fresh process: exit 2, one line on stderr, nothing on stdout, no Ray."""
    data = damaged(tmp_path, "truncated PNG")
    storage = tmp_path / "runs"
    env = {**os.environ, "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    done = subprocess.run(
        [sys.executable, "-m", "muratune.cli", *_search_args(data.root, storage)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 2, done.stderr
    assert_one_line_error(done.stderr, [data.image, "truncated", "--skip-bad-images"])
    assert done.stdout == ""
    assert not (storage / "bad").exists()
    assert "Ray" not in done.stderr


@pytest.mark.slow
def test_search_with_skip_bad_images_runs_and_records_the_excluded_images(ray_session, tmp_path, capsys) -> None:
    data = damaged(tmp_path, "truncated PNG")
    storage = tmp_path / "runs"
    sets = tiny_overrides(
        data.fixture.base,
        storage,
        name="skipped",
        **{
            "data.image_size": 32,
            "data.cache_dir": tmp_path / "cache",
            "budget.num_samples": 1,
            "budget.max_epochs": 1,
            "budget.grace_period": 1,
            "resources.max_concurrent_trials": 1,
            "space.batch_size": 8,
        },
    )
    args = ["search", str(DEMO_CONFIG), "--skip-bad-images"]
    for item in sets:
        args += ["--set", item]
    code, out, err = run(args, capsys)
    assert code == 0, out[-2000:] + err[-2000:]
    exp = storage / "skipped"
    assert f"excluded: {data.fixture.base / data.image}" in out
    info = json.loads((exp / layout.CACHE_JSON).read_text())
    assert [item["image_path"] for item in info["excluded"]] == [data.image]
    assert "truncated" in info["excluded"][0]["reason"]
    assert "skip_bad_images: true" in (exp / layout.RESOLVED_CONFIG).read_text()
    summary = pd.read_csv(exp / layout.SUMMARY_CSV)
    assert list(summary.state) == ["COMPLETE"]


# ------------------------------------------------------------------------------------------------ predict
@pytest.fixture(scope="module")
def ensemble(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-member random-weight ensemble (see `make_ensemble`)."""
    return make_ensemble(tmp_path_factory.mktemp("ensemble"))


def _predict(ensemble: Path, data: Damaged, out: Path, *extra: str) -> list[str]:
    return ["predict", str(ensemble), str(data.fixture.csv(TRAIN_IMAGES)), str(out), *extra]


@pytest.mark.parametrize("name", list(CASES))
def test_predict(ensemble: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    data = damaged(tmp_path, name)
    outcome = data.case.expect["predict"]
    out = tmp_path / "out.csv"
    before = tree_digest(data.fixture.base)
    code, _, err = run(_predict(ensemble, data, out), capsys)
    assert tree_digest(data.fixture.base) == before
    fragments = data.fragments()
    if outcome == SKIPPABLE:
        fragments = [f"{TRAIN_IMAGES}:", *fragments, "--skip-bad-images"]  # the row, the file, the reason
    assert_outcome(code, err, outcome, fragments)
    assert out.exists() == (outcome in (OK, WARN))
    if outcome == FAIL:
        code, _, err = run(_predict(ensemble, data, out, "--skip-bad-images"), capsys)
        assert code == 2 and not out.exists()
        assert_one_line_error(err, fragments)
    if outcome == SKIPPABLE:
        code, _, err = run(_predict(ensemble, data, out, "--skip-bad-images"), capsys)
        assert code == 0, err
        predicted = pd.read_csv(out, header=None, names=["study_path", "label"])
        assert data.study not in set(predicted.study_path)  # its only view was unreadable
        unreadable = [line for line in err.splitlines() if line.startswith("muratune: warning: unreadable image:")]
        assert len(unreadable) == 1 and data.image in unreadable[0]
        assert f"muratune: warning: study {data.study}: no readable image; left out" in err


def test_predict_with_overwrite_on_a_bad_image_leaves_the_existing_output_untouched(ensemble, tmp_path, capsys):
    data = damaged(tmp_path, "text file named .png")
    out = tmp_path / "out.csv"
    out.write_text("MURA-v1.1/valid/XR_WRIST/patient00001/study1_positive/,1\n")
    before = (out.stat().st_mtime_ns, out.read_bytes())
    code, _, err = run(_predict(ensemble, data, out, "--overwrite"), capsys)
    assert code == 2
    assert_one_line_error(err, [data.image, "not a PNG, JPEG or DICOM", "--skip-bad-images"])
    assert (out.stat().st_mtime_ns, out.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out.csv"]  # no temporary file left


def test_predict_stops_on_an_image_that_only_fails_to_decode(ensemble, tmp_path, capsys):
    """A PNG with a good signature and IEND chunk but corrupt pixel data passes the quick check, not the decoder."""
    data = damaged(tmp_path, "CRLF line endings")
    file = data.fixture.base / data.image
    raw = bytearray(file.read_bytes())
    start = raw.index(b"IDAT") + 4
    raw[start : start + 8] = b"\xff" * 8  # break the zlib stream; chunk sizes and IEND stay in place
    file.write_bytes(bytes(raw))
    out = tmp_path / "out.csv"
    code, _, err = run(_predict(ensemble, data, out), capsys)
    assert code == 2 and not out.exists()
    assert_one_line_error(err, [f"{TRAIN_IMAGES}:", data.image, "cannot decode", "--skip-bad-images"])


@pytest.mark.parametrize("first", ["../../etc/passwd", "/etc/passwd"])
def test_predict_refuses_an_escaping_path_even_on_the_first_line(ensemble, tmp_path, capsys, first: str) -> None:
    """A first line is only taken for a header when it is words (``path``), never when it is a path."""
    fixture = make_mura(tmp_path / "data")
    listing = tmp_path / "images.csv"
    listing.write_text(first + "\n" + fixture.csv(TRAIN_IMAGES).read_text())
    code, _, err = run(
        ["predict", str(ensemble), str(listing), str(tmp_path / "out.csv"), "--root", str(fixture.base)], capsys
    )
    assert code == 2
    assert_one_line_error(err, [f"{listing}:1", repr(first), "escapes the dataset root"])


# ------------------------------------------------------------------------------------------------ property tests
_LINE = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["path", "../../etc/passwd", "/etc/passwd", "a/../b.png", "~/x.png", "C:/x.png", ""]),
    st.builds(lambda parts: "/".join(parts) + ".png", st.lists(st.sampled_from(["a", "..", ".", "b", ""]), max_size=4)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_LINE, max_size=8), st.sampled_from(["\n", "\r\n"]))
def test_an_image_list_never_lets_an_escaping_path_through(
    tmp_path_factory: pytest.TempPathFactory, lines: list[str], ending: str
) -> None:
    """Any list parses into unique rows that stay under the root, or is refused with a UserError naming the file."""
    from muratune.data.image_list import parse_image_list
    from muratune.data.index import path_escapes_root
    from muratune.errors import UserError

    path = tmp_path_factory.mktemp("lists") / "images.csv"
    path.write_bytes(ending.join(lines).encode("utf-8", "surrogatepass"))
    try:
        rows = parse_image_list(path)
    except UserError as err:
        assert str(err).startswith(f"{path}"), err
        return
    images = [image for _, image in rows]
    assert images and len(set(images)) == len(images)
    assert not any(path_escapes_root(image) for image in images)
    assert all(image == image.strip() and "\r" not in image and "\n" not in image for image in images)


# ------------------------------------------------------------------------------------------------ image lists
def test_predict_keeps_a_quoted_path_with_a_comma_whole_and_reads_a_bom(ensemble, tmp_path, capsys) -> None:
    fixture = make_mura(tmp_path / "data")
    image, study = _single_view_train_image(fixture)
    comma_study = study.rstrip("/") + ", left/"
    (fixture.base / comma_study).mkdir(parents=True)
    os.replace(fixture.base / image, fixture.base / comma_study / Path(image).name)
    listing = tmp_path / "images.csv"
    listing.write_bytes(b"\xef\xbb\xbf" + f'"{comma_study}{Path(image).name}"\r\n'.encode())
    before = tree_digest(tmp_path / "data"), listing.read_bytes()
    out = tmp_path / "out.csv"
    code, _, err = run(["predict", str(ensemble), str(listing), str(out), "--root", str(fixture.base)], capsys)
    assert code == 0, err
    [row] = list(csv.reader(out.read_text().splitlines()))
    assert row[0] == comma_study and row[1] in ("0", "1")  # written quoted, read back whole
    assert (tree_digest(tmp_path / "data"), listing.read_bytes()) == before


def test_a_nul_byte_in_a_predict_list_is_one_line(ensemble, tmp_path, capsys) -> None:
    fixture = make_mura(tmp_path / "data")
    listing = tmp_path / "images.csv"
    listing.write_bytes(fixture.csv(TRAIN_IMAGES).read_bytes() + b"MURA-v1.1/train/XR_WRIST/p\x00/image1.png\n")
    before = listing.read_bytes()
    out = tmp_path / "out.csv"
    code, _, err = run(["predict", str(ensemble), str(listing), str(out), "--root", str(fixture.base)], capsys)
    assert code == 2 and not out.exists()
    rows = len(fixture.csv(TRAIN_IMAGES).read_text().splitlines())
    assert_one_line_error(err, [f"{listing}:{rows + 1}", "control character"])
    assert listing.read_bytes() == before
