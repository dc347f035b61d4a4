"""Search tests: real Ray Tune, real Optuna and ASHA; trial states, artifacts, refusal and resume."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pandas as pd
import pytest

from muratune import layout
from muratune.config import load_config
from muratune.errors import UserError
from muratune.fileio import replacing_folder
from muratune.search import experiment, factories, resources
from muratune.search import run as search_run
from muratune.trainables import checkpoint as ckpt
from tests.helpers.search import tiny_overrides

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def scripted_trial(config: dict, experiment_config: dict | None = None) -> None:
    """A cheap trial whose kappa rises with lr, so ASHA has something to rank (no model: tests the bookkeeping)."""
    import ray.tune

    max_epochs = experiment_config["budget"]["max_epochs"]
    quality = math.log10(config["lr"]) + 5  # lr 1e-4 -> 1, 1e-2 -> 3
    for epoch in range(1, max_epochs + 1):
        kappa = quality * epoch / max_epochs / 3
        ray.tune.report({"epoch": epoch, "val_kappa": kappa, "val_auc": 0.5 + kappa / 2})


def _scripted_config(tmp_path: Path, synthetic_root: Path, name: str, prune: bool = True):
    overrides = tiny_overrides(
        synthetic_root,
        tmp_path / "runs",
        name=name,
        **{
            "budget.num_samples": 6,
            "budget.max_epochs": 4,
            "budget.grace_period": 1,
            "budget.reduction_factor": 2,
            "resources.max_concurrent_trials": 1,
            "space.lr": "{type: loguniform, low: 1.0e-4, high: 1.0e-2}",
            "optuna.n_startup_trials": 6,
            "optuna.prune_stopped_trials": prune,
        },
    )
    return load_config(DEMO, overrides)


def _optuna_trials(config) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=config.name, storage=layout.optuna_storage_url(config))
    return study.get_trials(deepcopy=False)


@pytest.mark.slow
def test_asha_stopped_trials_are_pruned_in_optuna(ray_session, tmp_path, synthetic_root):
    config = _scripted_config(tmp_path, synthetic_root, "pruned")
    result = search_run.run_search(config, trainable=scripted_trial, echo=lambda _: None)

    trials = _optuna_trials(config)
    states = [t.state for t in trials]
    assert len(trials) == 6
    assert optuna.trial.TrialState.PRUNED in states, "ASHA should have stopped at least one trial"
    assert optuna.trial.TrialState.COMPLETE in states
    for trial in trials:
        epochs = trial.user_attrs["epochs"]
        assert len(trial.intermediate_values) == epochs
        if trial.state == optuna.trial.TrialState.PRUNED:
            assert epochs < config.budget.max_epochs
        else:
            assert trial.state == optuna.trial.TrialState.COMPLETE
            assert epochs == config.budget.max_epochs
    summary = pd.read_csv(result.experiment_dir / layout.SUMMARY_CSV)
    by_id = {t.user_attrs["ray_trial_id"]: t.state.name for t in trials}
    assert dict(zip(summary.trial_id, summary.state, strict=True)) == by_id


@pytest.mark.slow
def test_stock_optuna_search_records_stopped_trials_as_complete(ray_session, tmp_path, synthetic_root):
    """The fault muratune fixes: Ray's stock bookkeeping calls truncated runs COMPLETE."""
    config = _scripted_config(tmp_path, synthetic_root, "stock", prune=False)
    search_run.run_search(config, trainable=scripted_trial, echo=lambda _: None)
    trials = _optuna_trials(config)
    assert {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}
    assert any(t.user_attrs["epochs"] < config.budget.max_epochs for t in trials)


@pytest.mark.slow
def test_real_search_writes_experiment(ray_session, tmp_path, synthetic_root):
    config = load_config(DEMO, tiny_overrides(synthetic_root, tmp_path / "runs", name="real"))
    result = search_run.run_search(config, echo=lambda _: None)
    exp = result.experiment_dir
    assert (exp / layout.RESOLVED_CONFIG).is_file()
    assert load_config(exp / layout.RESOLVED_CONFIG) == config
    summary = result.summary
    assert len(summary) == 2
    assert set(summary.state) <= {"COMPLETE", "PRUNED"}
    for checkpoint in summary.checkpoint:
        assert (Path(checkpoint) / "model.safetensors").is_file()
        assert (Path(checkpoint) / "val_studies.parquet").is_file()
    assert summary.best_val_kappa.notna().all()
    # finished trials never train again: no optimizer state is left in any of their checkpoints
    assert list(exp.glob(f"{layout.TRIALS_DIR}/*/checkpoint_*/model.safetensors"))
    assert not list(exp.glob(f"{layout.TRIALS_DIR}/*/checkpoint_*/{ckpt.OPTIMIZER_FILE}"))


def test_existing_experiment_is_refused_without_resume_or_overwrite(tmp_path, synthetic_root):
    config = load_config(DEMO, tiny_overrides(synthetic_root, tmp_path / "runs", name="taken"))
    with replacing_folder(layout.experiment_dir(config), layout.EXPERIMENT_KIND) as replacement:
        exp = experiment.prepare_experiment(config, resume=False, overwrite=False, replacement=replacement)
    assert replacement.aside is None
    marker = exp / "keep.txt"
    marker.write_text("finished work")
    with pytest.raises(UserError, match="already exists"):
        experiment.prepare_experiment(config, resume=False, overwrite=False)
    assert marker.read_text() == "finished work"
    with pytest.raises(UserError, match="no search to resume"):
        experiment.prepare_experiment(config.model_copy(update={"name": "absent"}), resume=True, overwrite=False)


def test_too_many_gpus_per_trial_is_refused(ray_session, tmp_path, synthetic_root):
    config = load_config(DEMO, tiny_overrides(synthetic_root, tmp_path / "runs", **{"resources.gpus_per_trial": 1}))
    with pytest.raises(UserError, match="gpus_per_trial"):
        resources.check_cluster_resources(config)


def failing_trial(config: dict, experiment_config: dict | None = None) -> None:
    """Fails (a simulated out-of-memory) for small learning rates, after one reported epoch."""
    import ray.tune

    ray.tune.report({"epoch": 1, "val_kappa": 0.1, "val_auc": 0.55})
    if config["lr"] < 1e-3:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
    for epoch in range(2, experiment_config["budget"]["max_epochs"] + 1):
        ray.tune.report({"epoch": epoch, "val_kappa": 0.1 * epoch, "val_auc": 0.5 + 0.05 * epoch})


@pytest.mark.slow
def test_failing_trials_are_recorded_with_their_reason_and_the_search_goes_on(ray_session, tmp_path, synthetic_root):
    config = _scripted_config(tmp_path, synthetic_root, "failing")
    config = config.model_copy(update={"failure": config.failure.model_copy(update={"max_failures": 0})})
    result = search_run.run_search(config, trainable=failing_trial, echo=lambda _: None)
    summary = result.summary
    assert len(summary) == 6
    failed = summary[summary.state == "FAIL"]
    assert not failed.empty and (summary.state != "FAIL").any()
    assert failed.error.str.contains("out of memory").all()
    states = {t.user_attrs["ray_trial_id"]: t.state for t in _optuna_trials(config)}
    assert all(states[tid] == optuna.trial.TrialState.FAIL for tid in failed.trial_id)


def flaky_trial(config: dict, experiment_config: dict | None = None) -> None:
    """Checkpoints every epoch; the first attempt dies at epoch 2 (a transient fault), the retry resumes."""
    import json
    import tempfile

    import ray.tune

    start = 0
    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            start = json.loads((Path(folder) / "state.json").read_text())["epoch"]
    for epoch in range(start + 1, experiment_config["budget"]["max_epochs"] + 1):
        if epoch == 2 and checkpoint is None:
            raise RuntimeError("node lost (simulated transient fault)")
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "state.json").write_text(json.dumps({"epoch": epoch}))
            metrics = {"epoch": epoch, "val_kappa": 0.1 * epoch, "val_auc": 0.5 + 0.05 * epoch, "resumed_from": start}
            ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(folder))


@pytest.mark.slow
def test_max_failures_retries_a_trial_from_its_last_checkpoint(ray_session, tmp_path, synthetic_root):
    config = _scripted_config(tmp_path, synthetic_root, "flaky")
    config = config.model_copy(
        update={
            "budget": config.budget.model_copy(update={"num_samples": 2, "grace_period": 4}),
            "failure": config.failure.model_copy(update={"max_failures": 1}),
        }
    )
    result = search_run.run_search(config, trainable=flaky_trial, echo=lambda _: None)
    assert set(result.summary.state) == {"COMPLETE"}
    for trial_dir in result.summary.trial_dir:
        progress = pd.read_csv(Path(trial_dir) / "progress.csv")
        assert list(progress.epoch) == [1, 2, 3, 4]
        assert list(progress.resumed_from) == [0, 1, 1, 1]


def test_asha_ranks_rungs_by_its_own_metric_while_the_search_keeps_kappa(tmp_path, synthetic_root):
    config = load_config(DEMO, tiny_overrides(synthetic_root, tmp_path / "runs"))
    scheduler = factories.create_scheduler(config)
    assert scheduler.set_search_properties("val_kappa", "max")  # TuneConfig's metric is accepted ...
    assert (scheduler.metric, scheduler._metric_op) == ("val_auc", 1.0)  # ... and the rung metric is kept
    by_loss = load_config(DEMO, tiny_overrides(synthetic_root, tmp_path / "runs", **{"budget.rung_metric": "val_loss"}))
    assert factories.create_scheduler(by_loss)._metric_op == -1.0
    with pytest.raises(UserError, match="rung_metric"):
        load_config(DEMO, tiny_overrides(synthetic_root, tmp_path / "runs", **{"budget.rung_metric": "val_f1"}))


def slow_scripted_trial(config: dict, experiment_config: dict | None = None) -> None:
    """`scripted_trial` at half a second per epoch, so that a time budget ends the search mid-trial."""
    import time

    import ray.tune

    for epoch in range(1, experiment_config["budget"]["max_epochs"] + 1):
        time.sleep(0.5)
        ray.tune.report({"epoch": epoch, "val_kappa": 0.01 * epoch, "val_auc": 0.5 + 0.01 * epoch})


def test_a_time_budget_from_the_first_report_starts_its_clock_then(tmp_path):
    import time

    from muratune.search.stopper import TimeBudget

    mark = tmp_path / layout.TIME_BUDGET_REACHED
    budget = TimeBudget(0.05, mark, from_first_report=True)
    assert not budget.stop_all()
    time.sleep(0.1)
    assert not budget.stop_all() and not mark.exists()  # no trial has reported: the budget has not started
    assert not budget("trial", {"epoch": 1})
    assert not budget.stop_all()  # the clock starts here
    time.sleep(0.1)
    assert budget.stop_all() and mark.is_file()


def test_trials_the_budget_cut_are_recorded_in_the_study_as_the_summary_has_them(tmp_path):
    """RUNNING trials become PRUNED with their epochs, or COMPLETE with their last value once they reached
    max_epochs; a trial never started has 0 epochs."""
    from muratune.search.summary import prune_cut_trials

    config = load_config(DEMO, values={"name": "cut", "storage": str(tmp_path), "budget.max_epochs": 3})
    (tmp_path / "cut").mkdir()
    study = optuna.create_study(study_name="cut", storage=layout.optuna_storage_url(config), direction="maximize")
    for steps in ([0.5], [0.5, 0.6, 0.7], []):
        trial = study.ask()
        for step, value in enumerate(steps, start=1):
            trial.report(value, step)
    assert prune_cut_trials(config) == 3
    states = [(t.state, t.value, t.user_attrs["epochs"]) for t in study.get_trials()]
    pruned, complete = optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE
    assert states == [(pruned, 0.5, 1), (complete, 0.7, 3), (pruned, None, 0)]
    assert prune_cut_trials(config) == 0  # nothing left RUNNING


def test_a_search_ended_by_its_time_budget_is_finished_and_refits(ray_session, tmp_path, synthetic_root):
    from muratune.refit.select import rank_trials, read_finished_summary

    overrides = tiny_overrides(
        synthetic_root,
        tmp_path / "runs",
        name="budget",
        **{
            "budget.num_samples": 4,
            "budget.max_epochs": 100,
            "budget.time_budget_s": 20,
            "budget.scheduler": "none",
            # The 20 s count from the first epoch reported: on a loaded machine the trials may take longer to start.
            "debug.time_budget_from_first_report": "true",
        },
    )
    config = load_config(DEMO, overrides)
    lines: list[str] = []
    result = search_run.run_search(config, trainable=slow_scripted_trial, echo=lines.append)
    assert result.unfinished == 0 and (result.experiment_dir / layout.TIME_BUDGET_REACHED).is_file()
    summary = pd.read_csv(result.experiment_dir / layout.SUMMARY_CSV, dtype={"trial_id": str})
    assert (summary["epochs"] > 0).any() and (summary["epochs"] < 100).all()
    assert set(summary["state"]) == {"PRUNED"}  # cut short by the budget: stopped for good, not RUNNING
    study = optuna.load_study(study_name=config.name, storage=result.optuna_storage)
    recorded = {t.user_attrs["ray_trial_id"]: t for t in study.trials}  # each knows its Ray trial from the start
    assert {t.state for t in study.trials} == {optuna.trial.TrialState.PRUNED}  # Optuna agrees: none left RUNNING
    assert {trial_id: recorded[trial_id].user_attrs["epochs"] for trial_id in summary["trial_id"]} == dict(
        zip(summary["trial_id"], summary["epochs"], strict=True)
    )
    assert any("budget.time_budget_s (20 s) ended the search" in line for line in lines)
    assert not any("--resume continues them" in line for line in lines)
    finished = read_finished_summary(result.experiment_dir, config.budget)  # refit takes it as a finished search
    best = rank_trials(finished).iloc[0]  # a trial with the best kappa (scripted trials tie; test_ranking breaks ties)
    assert best["best_val_kappa"] == summary["best_val_kappa"].max() and best["trial_id"] in set(summary["trial_id"])
    resumed = search_run.run_search(config, resume=True, trainable=slow_scripted_trial, echo=lambda _: None)
    again = pd.read_csv(resumed.experiment_dir / layout.SUMMARY_CSV, dtype={"trial_id": str})
    assert resumed.unfinished == 0 and again["epochs"].tolist() == summary["epochs"].tolist()  # the budget is spent
