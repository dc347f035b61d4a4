"""Interrupted searches: SIGINT/SIGTERM to the driver, then --resume, finishes without duplicated trials."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from muratune import layout
from muratune.config import load_config

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def _search_cmd(root: Path, storage: Path, *extra: str) -> list[str]:
    sets = {
        "storage": storage,
        "name": "interrupted",
        "data.image_size": 64,
        "data.num_workers": 0,
        "budget.num_samples": 3,
        "budget.max_epochs": 3,
        "budget.grace_period": 3,
        "resources.cpus_per_trial": 2,
        "space.backbone": "resnet10t",
    }
    args = [sys.executable, "-m", "muratune.cli", "search", str(DEMO), "--data", str(root)]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    return args + list(extra)


def _wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"search exited early with code {proc.returncode}")
        time.sleep(0.5)
    raise AssertionError("timed out waiting for the search")


@pytest.fixture()
def ray_env(tmp_path):
    """A short private temp dir for the subprocess's own Ray (socket paths must stay short)."""
    short = Path(tempfile.mkdtemp(prefix="mt", dir="/tmp"))
    env = {**os.environ, "RAY_TMPDIR": str(short), "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS")
    yield env
    shutil.rmtree(short, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_interrupted_search_resumes_to_the_requested_trials(synthetic_root, tmp_path, ray_env, signum):
    storage = tmp_path / "runs"
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(_search_cmd(synthetic_root, storage), stdout=log, stderr=subprocess.STDOUT, env=ray_env)
    trials_dir = storage / "interrupted" / "trials"
    try:
        _wait_for(lambda: any(trials_dir.glob("trial_*/checkpoint_*")), 300, proc)
        proc.send_signal(signum)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and trials_dir.is_dir()  # interrupted, not finished: scripts must not go on

    resumed = subprocess.run(
        _search_cmd(synthetic_root, storage, "--resume"), capture_output=True, text=True, env=ray_env, timeout=600
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    config = load_config(storage / "interrupted" / layout.RESOLVED_CONFIG)
    study = optuna.load_study(study_name="interrupted", storage=layout.optuna_storage_url(config))
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 3, [t.state for t in trials]
    assert all(t.state.is_finished() for t in trials)
    assert len({t.user_attrs.get("ray_trial_id") for t in trials}) == 3
    summary = pd.read_csv(storage / "interrupted" / layout.SUMMARY_CSV)
    assert len(summary) == 3
    assert set(summary.state) == {"COMPLETE"}
    assert (summary.epochs == 3).all()
