"""Interrupted searches: SIGINT/SIGTERM to the driver, then --resume, finishes without duplicated trials."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pandas as pd
import pytest

from muratune import layout
from muratune.config import load_config

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def _search_cmd(root: Path, storage: Path, *extra: str, **more: object) -> list[str]:
    sets: dict[str, object] = {
        "storage": storage,
        "name": "interrupted",
        "data.image_size": 64,
        "data.num_workers": 0,
        "budget.num_samples": 3,
        "budget.max_epochs": 3,
        "budget.grace_period": 3,
        "resources.cpus_per_trial": 2,
        "space.backbone": "resnet10t",
        **more,
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


def _interrupt_and_resume(
    root: Path, tmp_path: Path, env: dict, signum: int, started: Callable[[Path], bool], **sets: object
) -> Path:
    """Run a search, send ``signum`` once ``started(trials_dir)``, check it stopped as interrupted (130), then
    ``--resume`` it to the end; returns the experiment folder."""
    storage = tmp_path / "runs"
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(_search_cmd(root, storage, **sets), stdout=log, stderr=subprocess.STDOUT, env=env)
    trials_dir = storage / "interrupted" / "trials"
    try:
        _wait_for(lambda: started(trials_dir), 300, proc)
        proc.send_signal(signum)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and trials_dir.is_dir()  # interrupted, not finished: scripts must not go on

    resumed = subprocess.run(
        _search_cmd(root, storage, "--resume", **sets), capture_output=True, text=True, env=env, timeout=600
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    return storage / "interrupted"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_interrupted_search_resumes_to_the_requested_trials(synthetic_root, tmp_path, ray_env, signum):
    exp = _interrupt_and_resume(
        synthetic_root, tmp_path, ray_env, signum, lambda trials: any(trials.glob("trial_*/checkpoint_*"))
    )
    config = load_config(exp / layout.RESOLVED_CONFIG)
    study = optuna.load_study(study_name="interrupted", storage=layout.optuna_storage_url(config))
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 3, [t.state for t in trials]
    assert all(t.state.is_finished() for t in trials)
    assert len({t.user_attrs.get("ray_trial_id") for t in trials}) == 3
    summary = pd.read_csv(exp / layout.SUMMARY_CSV)
    assert len(summary) == 3
    assert set(summary.state) == {"COMPLETE"}
    assert (summary.epochs == 3).all()


@pytest.mark.slow
def test_an_interrupted_promotion_search_resumes_with_its_rungs(synthetic_root, tmp_path, ray_env):
    """Trials paused at a rung come back PENDING: only the top third of the rung trains on, as if never interrupted."""
    promotion = {"budget.scheduler": "asha-promotion", "optuna.sampler": "rung-tpe", "budget.grace_period": 1}
    exp = _interrupt_and_resume(  # once the driver logged an epoch 1, the rung at epoch 1 holds a paused trial
        synthetic_root,
        tmp_path,
        ray_env,
        signal.SIGINT,
        lambda trials: any(_logged_epochs(path) for path in trials.glob("trial_*/progress.csv")),
        **promotion,
    )
    summary = pd.read_csv(exp / layout.SUMMARY_CSV)
    assert len(summary) == 3 and sorted(summary.state) == ["COMPLETE", "PRUNED", "PRUNED"], summary
    progress = [pd.read_csv(trial_dir / "progress.csv") for trial_dir in (exp / "trials").glob("trial_*")]
    for trial in progress:
        assert list(trial.epoch) == list(range(1, len(trial) + 1))  # no epoch trained twice
    assert sorted(len(trial) for trial in progress) == [1, 1, 3]  # one trial promoted, two stopped at the rung
    promoted = next(trial for trial in progress if len(trial) == 3)
    assert promoted.val_auc.iloc[0] == max(trial.val_auc.iloc[0] for trial in progress)  # the rung's best
    rung_full = max(trial.timestamp.iloc[0] for trial in progress)  # the third value at the rung, 1 s resolution
    assert promoted.timestamp.iloc[1] >= rung_full  # nothing trained past the rung before all three were there


def _logged_epochs(progress_csv: Path) -> int:
    """Epochs in a trial's progress.csv (0 while it is empty or being written)."""
    try:
        return len(pd.read_csv(progress_csv))
    except (pd.errors.EmptyDataError, OSError):
        return 0
