"""The demo at a tiny size: every stage runs as its real command and leaves its artifacts."""

from __future__ import annotations

from pathlib import Path

import pytest

from muratune.cli import run_in_process
from muratune.demo import demo_config_text, run_demo
from muratune.errors import UserError


def test_the_demo_config_has_one_source():
    shipped = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    assert shipped.resolve() == (Path(__file__).resolve().parents[1] / "muratune" / "configs" / "demo.yaml")
    assert demo_config_text() == shipped.read_text()


@pytest.mark.slow
def test_tiny_demo_writes_every_artifact(ray_session, tmp_path):
    lines: list[str] = []
    out = tmp_path / "demo"
    report = run_demo(out, run_in_process, studies=80, trials=2, epochs=2, echo=lines.append)

    printed = "\n".join(lines)
    for step in ("data synth", "data check", "data cache", "search", "ensemble", "cam", "report"):
        assert f"$ muratune {step}" in printed
    data = out / "data" / "MURA-v1.1"
    exp = out / "runs" / "demo"
    assert (data / "train_image_paths.csv").is_file() and (data / "boxes.csv").is_file()
    assert (exp / "search_summary.csv").is_file() and (exp / "optuna.db").is_file()
    for strategy in ("best-single", "top-k-mean", "greedy", "greedy-per-body-part"):
        assert (exp / "ensemble" / strategy / "ensemble.json").is_file()
    assert (exp / "cams" / "index.html").is_file()
    assert list((exp / "cams").rglob("*.png"))
    assert report == exp / "report" / "index.html" and report.is_file()
    assert (exp / "report" / "leaderboard.csv").is_file()
    assert "Leaderboard" in report.read_text() or "leaderboard" in report.read_text()

    with pytest.raises(UserError, match="--overwrite"):
        run_demo(out, run_in_process, studies=80, trials=2, epochs=2, echo=lines.append)
