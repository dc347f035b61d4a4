"""Tests of the shared image cache: keyed rebuilds, one build under concurrency, bad images, pixels and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import muratune.data.cache as cache_module
from muratune.data.cache import build_cache
from muratune.data.images import read_image, resize_square
from muratune.data.index import load_index
from muratune.errors import UserError
from tests.helpers.mura import make_mura


@pytest.fixture()
def tiny(tmp_path: Path) -> pd.DataFrame:
    """The index of a tiny private dataset (12 x 10 px images) that a test may modify."""
    return load_index(make_mura(tmp_path / "data").base)


@pytest.fixture()
def build_counter(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every cache build (the temporary folder written)."""
    builds: list[Path] = []
    write = cache_module._write_cache

    def counting_write(tmp: Path, *args: object, **kwargs: object) -> None:
        builds.append(tmp)
        write(tmp, *args, **kwargs)

    monkeypatch.setattr(cache_module, "_write_cache", counting_write)
    return builds


def _build(index: pd.DataFrame, cache_dir: Path, size: int = 16, mode: str = "pad", **kwargs):
    return build_cache(index, size, mode, cache_dir=cache_dir, workers=1, progress=False, **kwargs)


def _folders(cache_dir: Path) -> list[str]:
    """Everything in a cache root except lock files."""
    return sorted(p.name for p in cache_dir.iterdir() if not p.name.endswith(".lock"))


def _truncate(path: Path, keep: int = 60) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def test_second_call_opens_the_same_cache_without_rebuilding(tiny, tmp_path, build_counter) -> None:
    first = _build(tiny, tmp_path / "cache")
    mtime = first.path.stat().st_mtime_ns
    second = _build(tiny, tmp_path / "cache")
    assert second.path == first.path
    assert len(build_counter) == 1
    assert second.path.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(second.images, first.images)
    assert _folders(tmp_path / "cache") == [first.path.name]


@pytest.mark.parametrize("change", ["touch", "rewrite"])
def test_changed_image_gives_a_new_cache(tiny, tmp_path, build_counter, change: str) -> None:
    first = _build(tiny, tmp_path / "cache")
    image = Path(tiny.attrs["root"]) / tiny["image_path"].iloc[3]
    if change == "touch":
        stat = image.stat()
        os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    else:
        image.write_bytes(image.read_bytes() + b"\0")  # trailing bytes after IEND: same pixels, new size
    second = _build(tiny, tmp_path / "cache")
    assert second.path != first.path
    assert len(build_counter) == 2
    assert _folders(tmp_path / "cache") == sorted([first.path.name, second.path.name])


def test_size_and_mode_give_separate_caches(tiny, tmp_path) -> None:
    paths = {
        (size, mode): _build(tiny, tmp_path / "cache", size, mode).path
        for size in (8, 16)
        for mode in ("pad", "stretch")
    }
    assert len(set(paths.values())) == 4
    for (size, mode), path in paths.items():
        assert path.name.endswith(f"-{size}px-{mode}")
        assert _build(tiny, tmp_path / "cache", size, mode).images.shape[1:] == (size, size)


def test_a_subset_of_the_index_has_its_own_cache(tiny, tmp_path) -> None:
    subset = tiny.iloc[:5].copy()
    subset.attrs = dict(tiny.attrs)
    assert _build(subset, tmp_path / "cache").path != _build(tiny, tmp_path / "cache").path


_CONCURRENT_SCRIPT = """
import sys, time
import muratune.data.cache as cache_module
from muratune.data.index import load_index

write = cache_module._write_cache
def slow_write(*args, **kwargs):
    print("built", flush=True)
    time.sleep(1.0)  # widen the window in which the other process arrives
    write(*args, **kwargs)
cache_module._write_cache = slow_write
cache = cache_module.build_cache(load_index(sys.argv[1]), 16, cache_dir=sys.argv[2], workers=1, progress=False)
print(cache.path, flush=True)
"""


def test_two_processes_building_at_once_make_one_cache(tiny, tmp_path) -> None:
    cache_dir = tmp_path / "cache"
    command = [sys.executable, "-c", _CONCURRENT_SCRIPT, tiny.attrs["root"], str(cache_dir)]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err for _, err in outputs]
    lines = [out.split() for out, _ in outputs]
    assert sum(line.count("built") for line in lines) == 1
    paths = {line[-1] for line in lines}
    assert len(paths) == 1
    assert _folders(cache_dir) == [Path(paths.pop()).name]  # no leftover temporary folders


def test_truncated_png_is_a_user_error_naming_the_file(tiny, tmp_path) -> None:
    bad = tiny["image_path"].iloc[2]
    _truncate(Path(tiny.attrs["root"]) / bad)
    with pytest.raises(UserError, match=bad) as info:
        _build(tiny, tmp_path / "cache")
    assert "--skip-bad-images" in str(info.value)
    assert not (tmp_path / "cache").exists() or _folders(tmp_path / "cache") == []


def test_skip_bad_images_excludes_and_lists_them(tiny, tmp_path) -> None:
    bad = tiny["image_path"].iloc[[2, 7]].tolist()
    for path in bad:
        _truncate(Path(tiny.attrs["root"]) / path)
    cache = _build(tiny, tmp_path / "cache", skip_bad_images=True)
    assert [item["image_path"] for item in cache.excluded] == bad
    assert all(path in item["reason"] for path, item in zip(bad, cache.excluded, strict=True))
    assert len(cache.index) == len(tiny) - 2
    rows = cache.rows_for(tiny["image_path"])
    assert (rows[[2, 7]] == -1).all() and (rows[rows >= 0] < len(cache.images)).all()


def test_cached_pixels_equal_resize_square_of_read_image(synthetic_root, tmp_path) -> None:
    index = load_index(synthetic_root)
    picks = index.iloc[[0, 57, 301, len(index) - 1]]
    cache = build_cache(picks, 128, cache_dir=tmp_path / "cache", workers=2, progress=False)
    for row, image_path in zip(cache.rows_for(picks["image_path"]), picks["image_path"], strict=True):
        expected, geo = resize_square(read_image(synthetic_root / image_path), 128)
        np.testing.assert_array_equal(cache.images[row], expected)
        assert cache.geometry(int(row)) == geo


def test_images_reduced_while_decoding_keep_the_original_geometry(synthetic_root, tmp_path) -> None:
    index = load_index(synthetic_root)
    picks = index.iloc[[0, 57, 301]]
    cache = build_cache(picks, 48, cache_dir=tmp_path / "cache", workers=1, progress=False)  # 256 px > 2 x 48
    for row, image_path in zip(cache.rows_for(picks["image_path"]), picks["image_path"], strict=True):
        direct, geo = resize_square(read_image(synthetic_root / image_path), 48)
        assert cache.geometry(int(row)) == geo
        assert np.abs(cache.images[row].astype(int) - direct).mean() < 2.0


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "muratune.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_builds_the_cache(synthetic_root, tmp_path) -> None:
    result = _cli("data", "cache", str(synthetic_root), "--size", "64", "--cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr
    assert "64px" in result.stdout
    [folder] = _folders(tmp_path / "cache")
    assert folder.endswith("-64px-pad")


def test_cli_reports_a_truncated_png_in_one_line(tiny, tmp_path) -> None:
    bad = tiny["image_path"].iloc[4]
    _truncate(Path(tiny.attrs["root"]) / bad)
    args = (
        "data",
        "cache",
        tiny.attrs["root"],
        "--size",
        "16",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--workers",
        "1",
    )
    result = _cli(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("muratune: error:") and bad in line
    skipped = _cli(*args, "--skip-bad-images")
    assert skipped.returncode == 0, skipped.stderr
    assert bad in skipped.stderr


def test_cache_folders_follow_the_umask_so_a_team_can_share_one(tiny: pd.DataFrame, tmp_path: Path) -> None:
    previous = os.umask(0o002)
    try:
        cache = _build(tiny, tmp_path / "cache")
    finally:
        os.umask(previous)
    assert cache.path.stat().st_mode & 0o777 == 0o775  # mkdtemp alone would leave 0700
    assert all(p.stat().st_mode & 0o020 for p in cache.path.iterdir()), "group-writable files too"
