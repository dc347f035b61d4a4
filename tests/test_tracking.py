"""MLflow tracking: one run per trial with params, per-epoch metrics, state tag and config artifact; resume."""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from muratune.cli import main
from muratune.config import HYPERPARAMETERS, load_config
from muratune.errors import UserError
from muratune.layout import MLFLOW_ARTIFACTS, MLFLOW_DB, RESOLVED_CONFIG, TRIALS_DIR
from muratune.search.mlflow_callback import STATE_TAG, TRIAL_NAME_TAG
from muratune.search.run import run_search
from tests.helpers.search import DEMO_CONFIG as DEMO
from tests.helpers.search import tiny_overrides


def _runs(uri: str, name: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None, f"no MLflow experiment {name!r} in {uri}"
    return client.search_runs([experiment.experiment_id])


def _history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, key)]


@pytest.mark.slow
def test_search_logs_one_mlflow_run_per_trial(ray_session, synthetic_root, tmp_path):
    uri = f"sqlite:///{tmp_path / 'tracking' / 'mlflow.db'}"
    (tmp_path / "tracking").mkdir()
    overrides = tiny_overrides(synthetic_root, tmp_path / "runs", name="tracked", **{"tracking.mlflow": uri})
    result = run_search(load_config(DEMO, overrides), echo=lambda _: None)

    runs = _runs(uri, "tracked")
    summary = result.summary.set_index("trial_id")
    assert len(runs) == len(summary) == 2
    client = MlflowClient(tracking_uri=uri)
    for run in runs:
        trial_id = run.data.tags[TRIAL_NAME_TAG].removeprefix("trial_")
        row = summary.loc[trial_id]
        assert set(run.data.params) == set(HYPERPARAMETERS)  # the hyperparameters, not the bound settings
        assert run.data.params["backbone"] == row["backbone"] and float(run.data.params["lr"]) == row["lr"]
        progress = pd.read_csv(Path(row["trial_dir"]) / "progress.csv")
        kappa = _history(uri, run.info.run_id, "val_kappa")
        assert [step for step, _ in kappa] == list(range(1, row["epochs"] + 1))
        assert [value for _, value in kappa] == pytest.approx(progress["val_kappa"].tolist())
        assert len(_history(uri, run.info.run_id, "val_auc")) == row["epochs"]
        assert run.data.tags[STATE_TAG] == row["state"]
        print(f"run {run.info.run_name}: params {run.data.params}; val_kappa {kappa}; state {row['state']}")
        assert run.info.status == "FINISHED"
        artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
        assert artifacts == [RESOLVED_CONFIG]
        local = client.download_artifacts(run.info.run_id, RESOLVED_CONFIG, str(tmp_path / run.info.run_id))
        assert Path(local).read_text() == (result.experiment_dir / RESOLVED_CONFIG).read_text()
    location = client.get_experiment_by_name("tracked").artifact_location
    assert location == (tmp_path / "tracking" / MLFLOW_ARTIFACTS).as_uri()  # beside the database, not in the cwd


def release_file(experiment_config: dict) -> Path:
    """The file that lets `held_trial` go past its first epoch: the test writes it before it resumes the search."""
    return Path(experiment_config["storage"]) / "released"


def held_trial(config: dict, experiment_config: dict | None = None) -> None:
    """Checkpoints every epoch, holding after the first until released: an interrupt finds it started and unfinished."""
    import ray.tune

    start = 0
    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            start = json.loads((Path(folder) / "state.json").read_text())["epoch"]
    for epoch in range(start + 1, experiment_config["budget"]["max_epochs"] + 1):
        while epoch > 1 and not release_file(experiment_config).exists():
            time.sleep(0.2)
        time.sleep(0.2)
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "state.json").write_text(json.dumps({"epoch": epoch}))
            metrics = {"epoch": epoch, "val_kappa": 0.1 * epoch, "val_auc": 0.5 + 0.05 * epoch}
            ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(folder))


def _interrupt_when(ready, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not ready():
        time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.slow
def test_resumed_trials_continue_their_mlflow_runs(ray_session, synthetic_root, tmp_path):
    extra = {
        "tracking.mlflow": "true",
        "budget.num_samples": 2,
        "budget.max_epochs": 6,
        "budget.grace_period": 6,
        "space.lr": "{type: loguniform, low: 1.0e-4, high: 1.0e-2}",
    }
    config = load_config(DEMO, tiny_overrides(synthetic_root, tmp_path / "runs", name="resumed", **extra))
    trials_dir = tmp_path / "runs" / "resumed" / TRIALS_DIR

    def both_trials_checkpointed() -> bool:
        return len({path.parent for path in trials_dir.glob("trial_*/checkpoint_*")}) == 2

    # Ctrl-C once both trials have written their first checkpoint (they hold there until released): Tune saves its
    # state and returns, as for a user's interrupt.
    watcher = threading.Thread(target=_interrupt_when, args=(both_trials_checkpointed,))
    watcher.start()
    first = run_search(config, trainable=held_trial, echo=lambda _: None)
    watcher.join()
    assert first.unfinished == 2
    uri = f"sqlite:///{first.experiment_dir / MLFLOW_DB}"
    assert len(_runs(uri, "resumed")) == 2

    release_file(config.model_dump(mode="json")).touch()
    result = run_search(config, resume=True, trainable=held_trial, echo=lambda _: None)
    assert set(result.summary.state) == {"COMPLETE"}

    runs = _runs(uri, "resumed")
    assert len(runs) == 2 and len({r.data.tags[TRIAL_NAME_TAG] for r in runs}) == 2  # continued, not duplicated
    for run in runs:
        steps = [step for step, _ in _history(uri, run.info.run_id, "val_kappa")]
        assert sorted(set(steps)) == list(range(1, 7))
        assert run.data.tags[STATE_TAG] == "COMPLETE" and run.info.status == "FINISHED"


def test_tracking_without_mlflow_installed_is_one_line_naming_the_extra(synthetic_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now raises ImportError
    args = ["search", str(DEMO), "--data", str(synthetic_root), "--set", f"storage={tmp_path}"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--set", "tracking.mlflow=true"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        "muratune: error: tracking.mlflow is set but MLflow is not installed; pip install 'muratune[mlflow]' "
        "(or set it to false)"
    ]
    assert not (tmp_path / "demo").exists()  # refused before the experiment folder was touched


@pytest.mark.parametrize(
    ("value", "message"), [("''", "tracking URI"), ("{uri: x}", "tracking.mlflow"), ("[1]", "tracking.mlflow")]
)
def test_bad_tracking_values_are_refused(value, message):
    with pytest.raises(UserError, match=message):
        load_config(DEMO, [f"tracking.mlflow={value}"])
    with pytest.raises(UserError, match="tracking.mlfow: unknown key; did you mean 'mlflow'"):
        load_config(DEMO, ["tracking.mlfow=true"])
