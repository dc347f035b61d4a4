"""Promotion-type ASHA (``budget.scheduler: asha-promotion``): its decisions, its limit, and a real Tune search."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
from ray.tune.schedulers import TrialScheduler

from muratune import layout
from muratune.config import load_config
from muratune.errors import UserError
from muratune.search import factories
from muratune.search import run as search_run
from muratune.search.promotion import PromotionASHA, PromotionLimiter
from tests.helpers.search import tiny_overrides

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
PROMOTION = {"budget.scheduler": "asha-promotion", "optuna.sampler": "rung-tpe"}  # the demo's tpe is refused


class Controller(SimpleNamespace):
    """What the scheduler reaches of Tune's controller: the trials, the searcher's state, stop_trial."""

    def __init__(self, trials: dict[str, SimpleNamespace], searcher_finished: bool = False) -> None:
        super().__init__(trials=trials, stopped=[])
        self.search_alg = SimpleNamespace(is_finished=lambda: searcher_finished)

    def get_trials(self) -> list[SimpleNamespace]:
        return list(self.trials.values())

    def stop_trial(self, trial: SimpleNamespace) -> None:
        trial.status = "TERMINATED"
        self.stopped.append(trial.trial_id)


def _scheduler_with(names: str, max_concurrent: int | None = None) -> tuple[PromotionASHA, Controller]:
    scheduler = PromotionASHA("acc", "max", 50, 2, 3, max_concurrent=max_concurrent)
    controller = Controller({name: SimpleNamespace(trial_id=name, status="RUNNING") for name in names})
    for trial in controller.trials.values():
        scheduler.on_trial_add(controller, trial)
    return scheduler, controller


def _report(scheduler: PromotionASHA, controller: Controller, name: str, epoch: int, acc: float) -> str:
    """A result as Tune passes it; the trial's status follows the decision (a pause lands at once here)."""
    trial = controller.trials[name]
    decision = scheduler.on_trial_result(controller, trial, {"training_iteration": epoch, "acc": acc})
    trial.status = {TrialScheduler.PAUSE: "PAUSED"}.get(decision, "RUNNING")
    return decision


class RequeuedTrial(SimpleNamespace):
    """A trial as a restored search requeues it: its status set through Tune's ``set_status``."""

    def set_status(self, status: str) -> None:
        self.status = status


def _scheduler_and_limit(tmp_path: Path) -> tuple[PromotionASHA, PromotionLimiter]:
    """The promotion scheduler and its limit as ``muratune search`` builds them (2 concurrent trials, a rung at 1)."""
    from muratune.search.space import create_search_space

    config = load_config(DEMO, tiny_overrides(tmp_path, tmp_path / "runs", **PROMOTION))
    scheduler = factories.create_scheduler(config)
    limiter = factories.create_searcher(config, storage=None, scheduler=scheduler)
    limiter.set_search_properties("val_kappa", "max", create_search_space(config.space))
    return scheduler, limiter


def test_a_trial_pauses_at_a_rung_and_the_best_of_its_top_third_is_resumed() -> None:
    scheduler, controller = _scheduler_with("abcde")
    assert _report(scheduler, controller, "a", 1, 0.9) == TrialScheduler.CONTINUE  # between rungs
    assert [_report(scheduler, controller, n, 2, acc) for n, acc in (("a", 0.5), ("b", 0.7))] == ["PAUSE"] * 2
    assert _report(scheduler, controller, "c", 2, 0.6) == TrialScheduler.PAUSE  # 3 now: b is the top third
    assert scheduler.promotion_waiting()
    assert scheduler.choose_trial_to_run(controller) is controller.trials["b"]  # a free worker resumes b
    controller.trials["b"].status = "RUNNING"
    controller.trials["e"].status = "PENDING"
    assert not scheduler.promotion_waiting()
    assert scheduler.choose_trial_to_run(controller) is controller.trials["e"]  # no promotion left: a new trial
    assert _report(scheduler, controller, "d", 2, 0.9) == TrialScheduler.CONTINUE  # 4 at the rung, d on top
    assert scheduler.promoted[2] == {"b", "d"} and scheduler.resumed == ["b"]
    assert _report(scheduler, controller, "d", 50, 0.95) == TrialScheduler.STOP  # a full trial ends


def test_a_promotion_waits_for_the_pause_to_land_and_for_a_free_worker() -> None:
    scheduler, controller = _scheduler_with("abcde", max_concurrent=2)
    for name, acc in (("a", 0.9), ("b", 0.5)):
        _report(scheduler, controller, name, 2, acc)
    controller.trials["a"].status = "RUNNING"  # Tune still saves a's checkpoint: its pause has not landed
    assert _report(scheduler, controller, "c", 2, 0.4) == TrialScheduler.PAUSE  # a is the top third
    controller.trials["e"].status = "TERMINATED"  # only d runs: a worker is free
    assert scheduler.promotion_waiting() and scheduler.choose_trial_to_run(controller) is None
    assert "a" not in scheduler.landed_pauses()
    controller.trials["a"].status = "PAUSED"
    controller.trials["e"].status = "RUNNING"  # d and e run: no free worker
    assert scheduler.choose_trial_to_run(controller) is None
    controller.trials["d"].status = "TERMINATED"
    assert scheduler.choose_trial_to_run(controller) is controller.trials["a"]


def test_a_rung_stays_ranked_as_values_arrive_and_a_value_set_again_replaces_the_old_one() -> None:
    scheduler = PromotionASHA("acc", "min", 50, 2, 3)
    values = {"a": 0.5, "b": float("nan"), "c": 0.1, "d": 0.9, "e": 0.3, "f": 0.1}
    for name, value in values.items():
        scheduler.record(2, name, value)
    scheduler.record(2, "d", 0.05)  # d reports rung 2 again (a restarted trial)
    assert scheduler.ranked[2] == ["d", "c", "f", "e", "a"]  # lowest first for "min"; NaN left out; ties in order
    assert scheduler.promotable(2) == ["d", "c"]  # 6 values: the top 2


def test_a_nan_value_ranks_last_and_a_restarted_trial_passes_a_rung_it_was_promoted_from() -> None:
    scheduler, controller = _scheduler_with("abcdef")
    for name, acc in (("a", 0.5), ("b", float("nan")), ("c", 0.4), ("d", 0.3), ("e", 0.2)):
        _report(scheduler, controller, name, 2, acc)
    assert scheduler.promotable(2) == ["a"]  # 5 values: the top 1; NaN would sort anywhere
    assert _report(scheduler, controller, "f", 2, 0.9) == TrialScheduler.CONTINUE  # 6 values: f, then a
    assert scheduler.promotable(2) == ["a"] and "b" not in scheduler.promotable(2)
    controller.trials["f"].status = "RUNNING"
    assert _report(scheduler, controller, "f", 2, 0.9) == TrialScheduler.CONTINUE  # restarted: it passed rung 2


def test_the_trials_left_paused_are_stopped_once_no_trial_can_come_or_be_promoted() -> None:
    scheduler, controller = _scheduler_with("abc")
    controller.search_alg.is_finished = lambda: True
    _report(scheduler, controller, "a", 2, 0.5)
    assert scheduler.choose_trial_to_run(controller) is None and controller.stopped == []  # b and c still run
    _report(scheduler, controller, "b", 2, 0.4)
    _report(scheduler, controller, "c", 2, 0.3)  # a is the top third: resumed, not stopped
    assert scheduler.choose_trial_to_run(controller) is controller.trials["a"]
    controller.trials["a"].status = "RUNNING"
    assert scheduler.choose_trial_to_run(controller) is None and controller.stopped == []  # a may reach a rung
    scheduler.on_trial_complete(controller, controller.trials["a"], {})
    controller.trials["a"].status = "TERMINATED"
    assert scheduler.choose_trial_to_run(controller) is None
    assert sorted(controller.stopped) == ["b", "c"]


def test_the_limit_does_not_count_paused_trials_and_leaves_a_worker_to_a_waiting_promotion(tmp_path: Path) -> None:
    scheduler, limiter = _scheduler_and_limit(tmp_path)
    assert isinstance(scheduler, PromotionASHA) and isinstance(limiter, PromotionLimiter)
    assert scheduler.max_concurrent == limiter.max_concurrent == 2
    for name in "ab":
        scheduler.on_trial_add(None, SimpleNamespace(trial_id=name, status="PAUSED"))
    assert limiter.suggest("a") and limiter.suggest("b") and limiter.suggest("c") is None  # two run
    scheduler.paused.add("a")  # a pauses at a rung
    assert limiter.suggest("c") is not None
    scheduler.paused.add("b")
    for name, value in (("a", 0.9), ("b", 0.1), ("x", 0.2)):  # a is promotable: its worker is kept for it
        scheduler.record(1, name, value)
    assert scheduler.promotion_waiting() and limiter.suggest("d") is None


def test_the_limit_counts_a_trial_whose_pause_has_not_landed(tmp_path: Path) -> None:
    scheduler, limiter = _scheduler_and_limit(tmp_path)
    trials = {name: SimpleNamespace(trial_id=name, status="RUNNING") for name in "ab"}
    for trial in trials.values():
        scheduler.on_trial_add(None, trial)
    assert limiter.suggest("a") and limiter.suggest("b")
    scheduler.paused.add("a")  # a pauses at a rung; Tune still saves its checkpoint, holding its worker
    assert limiter.suggest("c") is None
    trials["a"].status = "PAUSED"
    assert limiter.suggest("c") is not None


def test_a_restored_search_takes_its_rungs_back_and_starts_a_paused_trial_only_when_promoted(tmp_path: Path) -> None:
    scheduler, limiter = _scheduler_and_limit(tmp_path / "first")
    controller = Controller({})
    for name, auc in (("a", 0.3), ("b", 0.4), ("d", None), ("c", 0.2)):  # a and b pause; c and d run
        assert limiter.suggest(name) is not None
        controller.trials[name] = trial = SimpleNamespace(trial_id=name, status="RUNNING")
        scheduler.on_trial_add(controller, trial)
        if auc is not None:
            assert scheduler.on_trial_result(controller, trial, {"training_iteration": 1, "val_auc": auc}) == "PAUSE"
            trial.status = "PAUSED"
    assert scheduler.next_promotion() == (1, "b")  # c's value made b the rung's top third; d still runs
    snapshot = limiter.get_state()  # what Tune saves of its searcher when the search is interrupted

    restored, restored_limit = _scheduler_and_limit(tmp_path / "second")  # the Tuner unpickled: empty rungs
    restored_limit.set_state(snapshot)  # Tune restores its searcher first, then requeues the trials
    requeued = Controller({name: RequeuedTrial(trial_id=name, status="PENDING") for name in "abcd"})
    for trial in requeued.trials.values():  # every unfinished trial comes back PENDING, which Tune would start
        restored.on_trial_add(requeued, trial)
    assert restored.rungs == scheduler.rungs and restored.paused == {"a", "b", "c"}
    assert {n: t.status for n, t in requeued.trials.items()} == {
        "a": "PAUSED",
        "b": "PAUSED",
        "c": "PAUSED",
        "d": "PENDING",
    }
    assert restored_limit.suggest("e") is None  # b's promotion waits for a worker
    assert restored.choose_trial_to_run(requeued) is requeued.trials["b"]  # promoted, as before the interruption
    requeued.trials["b"].status = "RUNNING"
    assert restored.choose_trial_to_run(requeued) is requeued.trials["d"]  # it was running: it goes on
    requeued.trials["d"].status = "RUNNING"
    assert restored.choose_trial_to_run(requeued) is None  # a and c wait at the rung: 2 run, the limit
    assert restored.on_trial_result(requeued, requeued.trials["d"], {"training_iteration": 1, "val_auc": 0.1}) == (
        "PAUSE"
    )

    older, older_limit = _scheduler_and_limit(tmp_path / "third")
    older_limit.set_state({k: v for k, v in snapshot.items() if k != "promotion_rungs"})  # saved before rungs were
    assert older.rungs == {1: {}} and older_limit.live_trials == limiter.live_trials


def test_a_promotion_search_refuses_a_searcher_without_its_limit(tmp_path: Path) -> None:
    from ray.tune.search import ConcurrencyLimiter

    overrides = tiny_overrides(tmp_path, tmp_path / "runs", **PROMOTION)
    config = load_config(DEMO, overrides)
    plain = ConcurrencyLimiter(factories.create_searcher(config, storage=None).searcher, max_concurrent=2)
    with pytest.raises(ValueError, match="PromotionLimiter"):
        factories.create_tuner(config, searcher=plain)


def test_promotion_type_asha_runs_one_bracket(tmp_path: Path) -> None:
    overrides = tiny_overrides(tmp_path, tmp_path / "runs", **PROMOTION)
    with pytest.raises(UserError, match="budget.*asha-promotion runs one bracket") as err:
        load_config(DEMO, [*overrides, "budget.brackets=2"])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("optuna.sampler=tpe", "needs optuna.sampler rung-tpe or random"),
        ("resources.workers_per_trial=2", "needs resources.workers_per_trial: 1"),
    ],
)
def test_promotion_type_asha_refuses_a_model_blind_to_paused_trials_and_data_parallel_trials(
    tmp_path: Path, setting: str, message: str
) -> None:
    overrides = tiny_overrides(tmp_path, tmp_path / "runs", **PROMOTION)
    with pytest.raises(UserError, match=message):
        load_config(DEMO, [*overrides, setting])


def test_promotion_type_asha_needs_a_searched_space(tmp_path: Path) -> None:
    overrides = tiny_overrides(tmp_path, tmp_path / "runs", **PROMOTION)
    fixed = [f"space.{name}={value}" for name, value in load_config(DEMO, overrides).space.defaults().items()]
    with pytest.raises(UserError, match="asha-promotion needs a searched space"):
        load_config(DEMO, [*overrides, *fixed])


def checkpointing_trial(config: dict, experiment_config: dict | None = None) -> None:
    """A cheap trial whose kappa rises with lr, checkpointing each epoch and resuming from its checkpoint."""
    import ray.tune

    assert experiment_config is not None
    start = 0
    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            start = json.loads((Path(folder) / "state.json").read_text())["epoch"]
    quality = math.log10(config["lr"]) + 5  # lr 1e-4 -> 1, 1e-2 -> 3
    max_epochs = experiment_config["budget"]["max_epochs"]
    for epoch in range(start + 1, max_epochs + 1):
        kappa = quality * epoch / max_epochs / 3
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "state.json").write_text(json.dumps({"epoch": epoch}))
            metrics = {"epoch": epoch, "val_kappa": kappa, "val_auc": 0.5 + kappa / 2, "resumed_from": start}
            ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(folder))


@pytest.mark.slow
def test_a_promotion_search_resumes_paused_trials_ends_and_records_them_in_optuna(
    ray_session, tmp_path: Path, synthetic_root: Path
) -> None:
    settings = {
        **PROMOTION,
        "budget.num_samples": 8,
        "budget.max_epochs": 4,
        "budget.grace_period": 1,
        "budget.reduction_factor": 2,
        "budget.time_budget_s": 600,  # a guard: the search must end by itself (asserted below), not by this
        "space.lr": "{type: loguniform, low: 1.0e-4, high: 1.0e-2}",
        "optuna.n_startup_trials": 3,
    }
    config = load_config(DEMO, tiny_overrides(synthetic_root, tmp_path / "runs", name="promotion", **settings))
    result = search_run.run_search(config, trainable=checkpointing_trial, echo=lambda _: None)
    assert not factories.time_budget_reached(result.experiment_dir)

    summary = result.summary
    assert len(summary) == 8 and set(summary.state) == {"COMPLETE", "PRUNED"}
    resumed = 0
    for trial_dir in summary.trial_dir:
        progress = pd.read_csv(Path(trial_dir) / "progress.csv")
        assert list(progress.epoch) == list(range(1, len(progress) + 1))  # a resumed trial never repeats an epoch
        resumed += int(progress.resumed_from.max() > 0)
    assert resumed  # some trial paused at a rung and went on from its checkpoint
    study = optuna.load_study(study_name=config.name, storage=layout.optuna_storage_url(config))
    for trial in study.get_trials(deepcopy=False):
        epochs = trial.user_attrs["epochs"]
        assert len(trial.intermediate_values) == epochs >= 1
        if trial.state == optuna.trial.TrialState.PRUNED:  # stopped while paused at a rung: no result came
            assert epochs < config.budget.max_epochs
        else:
            assert trial.state == optuna.trial.TrialState.COMPLETE and epochs == config.budget.max_epochs
    by_id = {t.user_attrs["ray_trial_id"]: t.state.name for t in study.get_trials(deepcopy=False)}
    assert dict(zip(summary.trial_id, summary.state, strict=True)) == by_id


def test_the_limits_snapshot_leaves_out_the_scheduler_and_its_restore_keeps_the_running_one(tmp_path: Path) -> None:
    overrides = tiny_overrides(tmp_path, tmp_path / "runs", **PROMOTION)
    config = load_config(DEMO, overrides)
    scheduler = factories.create_scheduler(config)
    limiter = factories.create_searcher(config, storage=None, scheduler=scheduler)
    limiter.live_trials.add("a")
    state = limiter.get_state()
    assert "scheduler" not in state and "searcher" not in state and state["live_trials"] == {"a"}
    limiter.live_trials.clear()
    limiter.set_state(state)
    assert limiter.live_trials == {"a"} and limiter.scheduler is scheduler
