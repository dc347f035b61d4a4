"""Interrupted work: outputs appear whole or not at all, old ones survive, unfinished trials are not "pruned"."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

import muratune.data.cache as cache_module
from muratune.config import load_config
from muratune.data.cache import build_cache
from muratune.data.index import load_index
from muratune.ensemble.predictor import StudyPredictor
from muratune.fileio import atomic_dir, atomic_path, write_marker
from muratune.search import summary
from tests.helpers.cli import run
from tests.helpers.ensemble import make_ensemble
from tests.helpers.mura import TRAIN_IMAGES, make_mura
from tests.helpers.search import DEMO_CONFIG


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ensemble(tmp_path_factory.mktemp("ensemble"))


def _state(path: Path) -> tuple[int, bytes]:
    return path.stat().st_mtime_ns, path.read_bytes()


def test_an_interrupted_file_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "summary.csv"
    target.write_text("finished work\n")
    before = _state(target)
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("half a fi")
        raise KeyboardInterrupt
    assert _state(target) == before
    assert [p.name for p in tmp_path.iterdir()] == ["summary.csv"]


def test_an_interrupted_folder_write_keeps_the_old_folder_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "report"
    target.mkdir()
    write_marker(target, "report")  # a report muratune made: the only kind of folder it may replace
    (target / "index.html").write_text("<p>finished</p>")
    before = _state(target / "index.html")
    with pytest.raises(KeyboardInterrupt), atomic_dir(target, overwrite=True, kind="report") as tmp:
        (tmp / "index.html").write_text("<p>hal")
        raise KeyboardInterrupt
    assert _state(target / "index.html") == before
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


def test_an_interrupted_cache_build_leaves_nothing_a_later_run_trusts(tmp_path: Path, monkeypatch) -> None:
    index = load_index(make_mura(tmp_path / "data").base)
    decode = cache_module._run_decoders

    def interrupted(array_path: Path, *args: object) -> list:
        decode(array_path, *args)  # the pixels are written, the index and meta.json are not
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module, "_run_decoders", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_cache(index, 16, cache_dir=tmp_path / "cache", workers=1, progress=False)
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.setattr(cache_module, "_run_decoders", decode)
    cache = build_cache(index, 16, cache_dir=tmp_path / "cache", workers=1, progress=False)
    assert len(cache.index) == len(index) and cache.images.shape[0] == len(index)


def test_an_interrupted_predict_leaves_the_existing_output_untouched(ensemble, tmp_path, capsys, monkeypatch) -> None:
    fixture = make_mura(tmp_path / "data")
    out = tmp_path / "out.csv"
    out.write_text("MURA-v1.1/valid/XR_WRIST/patient00001/study1_positive/,1\n")
    before = _state(out)

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(StudyPredictor, "predict_frame", interrupted)
    code, _, err = run(["predict", str(ensemble), str(fixture.csv(TRAIN_IMAGES)), str(out), "--overwrite"], capsys)
    assert code == 130 and "Traceback" not in err  # typer turns Ctrl-C into a quiet exit 130
    assert _state(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out.csv"]


def _result(trial_id: str, epochs: int, done: bool | None, error: Exception | None = None) -> SimpleNamespace:
    """A stand-in for a Ray Tune Result: the last metrics, the history, no checkpoints."""
    history = pd.DataFrame({"epoch": range(1, epochs + 1), "val_kappa": [0.1 * e for e in range(1, epochs + 1)]})
    metrics = {"trial_id": trial_id, "epoch": epochs} if epochs else {}
    if done is not None:
        metrics["done"] = done
    return SimpleNamespace(
        metrics=metrics,
        metrics_dataframe=history if epochs else None,
        best_checkpoints=[],
        error=error,
        config={"lr": 1e-3},
        path=f"/runs/x/trials/trial_{trial_id}",
    )


def test_an_interrupted_search_lists_its_unfinished_trials_as_running_not_pruned() -> None:
    config = load_config(DEMO_CONFIG, ["budget.max_epochs=4", "budget.grace_period=1"])
    results = [
        _result("complete", 4, done=True),
        _result("pruned", 1, done=True),  # ASHA stopped it: Tune marks its last result done
        _result("failed", 2, done=False, error=RuntimeError("CUDA out of memory")),
        _result("interrupted", 2, done=False),
        _result("pending", 0, done=None),  # never started before the interruption
    ]
    unfinished = summary.unfinished_trials(results, config)  # no study recorded them
    assert unfinished == {"interrupted", "pending"}
    table = summary.summarise(results, config, unfinished)
    assert dict(zip(table.trial_id, table.state, strict=True)) == {
        "complete": "COMPLETE",
        "pruned": "PRUNED",
        "failed": "FAIL",
        "interrupted": "RUNNING",
        "pending": "RUNNING",
    }


def test_data_preview_refuses_an_existing_png_without_overwrite(tmp_path, capsys) -> None:
    fixture = make_mura(tmp_path / "data")
    out = tmp_path / "preview.png"
    out.write_bytes(b"an earlier preview")
    before = _state(out)
    code, _, err = run(["data", "preview", str(fixture.base), "--policy", "flip", "--out", str(out)], capsys)
    assert code == 2
    assert err.strip() == f"muratune: error: {out}: already exists; pass --overwrite to replace it"
    assert _state(out) == before
