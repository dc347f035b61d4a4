"""The LCBench scale benchmark: honest Optuna bookkeeping, each epoch counted once, seeds reproduce, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

import numpy as np  # noqa: E402

from bench.lcbench.surrogate import FIDELITY_EPOCHS, MAX_EPOCHS, Surrogate, default_surrogate_dir  # noqa: E402
from muratune.constants import EPOCH  # noqa: E402

SURROGATE = default_surrogate_dir()
pytestmark = pytest.mark.skipif(SURROGATE is None, reason="LCBench surrogate not found (../shared/data/yahpo-lcbench)")
TASK = 3945
BUDGET = 6 * MAX_EPOCHS


@pytest.fixture(scope="module")
def surrogate() -> Surrogate:
    assert SURROGATE is not None
    return Surrogate(SURROGATE)


def test_surrogate_curves_rise_for_a_sane_configuration(surrogate: Surrogate) -> None:
    hparams = {
        "batch_size": 64,
        "learning_rate": 1e-3,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "num_layers": 2,
        "max_units": 256,
        "max_dropout": 0.1,
    }
    curve = surrogate.curve(TASK, hparams)
    assert curve.accuracy.shape == curve.epoch_s.shape == (MAX_EPOCHS,)
    assert 0 < curve.accuracy[0] < curve.accuracy[10] < curve.accuracy[-1] <= 1
    assert (curve.epoch_s > 0).all()


class RecordingSurrogate(Surrogate):
    """The real surrogate, remembering every surrogate epoch it was asked for."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.epochs_read: set[int] = set()

    def query(self, task: int, rows: np.ndarray) -> np.ndarray:
        self.epochs_read.update(int(e) for e in np.asarray(rows, dtype=float).reshape(-1, 8)[:, 0])
        return super().query(task, rows)


def test_a_trials_epoch_e_reads_surrogate_epoch_e_plus_1(surrogate: Surrogate) -> None:
    hparams = {"batch_size": 64, "learning_rate": 1e-3, "momentum": 0.9, "weight_decay": 1e-4}
    hparams |= {"num_layers": 2, "max_units": 256, "max_dropout": 0.1}
    values = [hparams[name] for name in ("batch_size", "learning_rate", "momentum", "weight_decay")]
    values += [hparams[name] for name in ("num_layers", "max_units", "max_dropout")]
    direct = surrogate.query(TASK, np.array([[epoch, *values] for epoch in range(1, 53)]))[:, 1] / 100
    curve = surrogate.curve(TASK, hparams)
    assert FIDELITY_EPOCHS == (2, 51) and MAX_EPOCHS == 50 == len(curve.accuracy)
    assert curve.accuracy[0] == pytest.approx(direct[1])  # a trial's epoch 1 is surrogate epoch 2, one trained epoch
    assert curve.accuracy[-1] == pytest.approx(direct[50])  # its epoch 50 is surrogate epoch 51
    np.testing.assert_allclose(curve.accuracy, direct[1:51], rtol=1e-6)


def test_nothing_reads_surrogate_epoch_1_or_52_and_a_full_trial_is_50_epochs(tmp_path: Path) -> None:
    from bench.lcbench.jobs import simulate
    from bench.lcbench.surrogate import best_known

    assert SURROGATE is not None
    recording = RecordingSurrogate(SURROGATE)
    _, controller = simulate(recording, TASK, "random", seed=0, workers=4, budget=BUDGET)
    assert recording.epochs_read == set(range(2, 52))
    full = [t for t in controller.trials if t.status == "TERMINATED" and t.epochs == MAX_EPOCHS]
    assert full and all(t.epochs <= MAX_EPOCHS for t in controller.trials)
    assert all(t.last_result[EPOCH] == MAX_EPOCHS for t in full)
    recording.epochs_read.clear()
    known = best_known(recording, [TASK], tmp_path / "best_known.json")
    assert recording.epochs_read == {51}  # the best known accuracy is taken at the last sensible epoch
    assert json.loads((tmp_path / "best_known.json").read_text())["fidelity_epochs"] == [2, 51]
    assert 0 < known[TASK] <= 1


def test_a_best_known_cache_of_another_fidelity_is_refused(surrogate: Surrogate, tmp_path: Path) -> None:
    from bench.lcbench.surrogate import best_known
    from muratune.errors import UserError

    old = tmp_path / "best_known.json"
    old.write_text(json.dumps({str(TASK): 0.9}))  # the old format, computed at surrogate epoch 52
    with pytest.raises(UserError, match="computed at another fidelity"):
        best_known(surrogate, [TASK], old)
    assert json.loads(old.read_text()) == {str(TASK): 0.9}


def test_stopped_trials_are_pruned_with_their_intermediate_values(surrogate: Surrogate) -> None:
    import optuna

    from bench.lcbench.jobs import simulate

    events, controller = simulate(surrogate, TASK, "muratune-stopping", seed=0, workers=4, budget=BUDGET)
    study = controller.searcher.searcher._ot_study
    trials = {t.user_attrs["ray_trial_id"]: t for t in study.get_trials(deepcopy=False)}
    assert set(trials) == {t.trial_id for t in controller.trials}
    pruned = [t for t in study.get_trials(states=(optuna.trial.TrialState.PRUNED,))]
    complete = [t for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))]
    assert pruned and complete
    for ray_id, ot_trial in trials.items():
        sim = controller.by_id[ray_id]
        expected = {e: pytest.approx(float(sim.curve.accuracy[e - 1])) for e in range(1, sim.epochs + 1)}
        assert ot_trial.intermediate_values == expected, ray_id
        if sim.epochs < MAX_EPOCHS:
            assert ot_trial.state == optuna.trial.TrialState.PRUNED, ray_id
        else:
            assert ot_trial.state == optuna.trial.TrialState.COMPLETE
            assert ot_trial.value == pytest.approx(float(sim.curve.accuracy[-1]))


def test_stock_optuna_tells_stopped_trials_as_complete(surrogate: Surrogate) -> None:
    import optuna

    from bench.lcbench.jobs import simulate

    _, controller = simulate(surrogate, TASK, "stock-optuna-asha", seed=0, workers=4, budget=BUDGET)
    study = controller.searcher.searcher._ot_study
    short = [t for t in controller.trials if t.epochs < MAX_EPOCHS and t.status == "TERMINATED"]
    assert short
    assert not study.get_trials(states=(optuna.trial.TrialState.PRUNED,))


def test_optuna_hyperband_prunes_at_optunas_own_rungs(surrogate: Surrogate) -> None:
    import optuna

    from bench.lcbench.jobs import simulate

    events, controller = simulate(surrogate, TASK, "optuna-hyperband", seed=0, workers=4, budget=BUDGET)
    study = controller.searcher.searcher._ot_study
    assert isinstance(study.pruner, optuna.pruners.HyperbandPruner)
    pruned = study.get_trials(states=(optuna.trial.TrialState.PRUNED,))
    assert pruned
    off_rung = 0
    for ot_trial in pruned:
        sim = controller.by_id[ot_trial.user_attrs["ray_trial_id"]]
        assert sorted(ot_trial.intermediate_values) == list(range(1, sim.epochs + 1))
        off_rung += sim.epochs not in (1, 3, 9, 27)  # Hyperband's rungs from 1 epoch, reduction factor 3
    # Only the trials still running when the budget ran out (at most one per worker) stop between rungs.
    assert off_rung <= 4 < len(pruned) - off_rung


@pytest.mark.parametrize("method", ["muratune", "bohb", "random", "optuna-hyperband", "muratune-stopping"])
def test_each_epoch_is_counted_once_and_trials_finish_out_of_order(surrogate: Surrogate, method: str) -> None:
    from bench.lcbench.jobs import simulate

    if method == "bohb":
        pytest.importorskip("hpbandster")
    events, controller = simulate(surrogate, TASK, method, seed=1, workers=8, budget=BUDGET)
    assert len(events) == BUDGET
    assert len({(e.trial_id, e.epoch) for e in events}) == BUDGET
    assert sum(t.epochs for t in controller.trials) == BUDGET
    for trial in controller.trials:  # paused and resumed trials (BOHB, promotion) continue where they stopped
        epochs = [e.epoch for e in events if e.trial_id == trial.trial_id]
        assert epochs == list(range(1, trial.epochs + 1)), trial.trial_id
    assert [e.clock_s for e in events] == sorted(e.clock_s for e in events)
    last_epoch = {}
    for e in events:
        last_epoch[e.trial_id] = e.clock_s
    finish_order = sorted(last_epoch, key=last_epoch.get)
    assert finish_order != sorted(last_epoch), "trials finished in the order they started"


def test_a_seed_reproduces_the_search(surrogate: Surrogate) -> None:
    from bench.lcbench.jobs import simulate

    first, _ = simulate(surrogate, TASK, "muratune", seed=3, workers=8, budget=BUDGET)
    again, _ = simulate(surrogate, TASK, "muratune", seed=3, workers=8, budget=BUDGET)
    other, _ = simulate(surrogate, TASK, "muratune", seed=4, workers=8, budget=BUDGET)
    assert first == again
    assert [e.accuracy for e in first] != [e.accuracy for e in other]


@pytest.mark.parametrize("method", ["dehb", "smac-hyperband", "one-epoch"])
def test_anchors_count_each_epoch_once_stop_at_their_fidelities_and_reproduce(
    surrogate: Surrogate, method: str
) -> None:
    from bench.lcbench.jobs import simulate

    pytest.importorskip({"dehb": "dehb", "smac-hyperband": "smac", "one-epoch": "numpy"}[method])
    workers = 4
    events, controller = simulate(surrogate, TASK, method, seed=3, workers=workers, budget=BUDGET)
    assert len(events) == len({(e.trial_id, e.epoch) for e in events}) == BUDGET
    assert sum(t.epochs for t in controller.trials) == BUDGET
    asked = controller.searcher.searcher.epochs
    # Each trial stops at the epochs its optimiser asked for; only those still running at the end stop short.
    short = [t for t in controller.trials if t.epochs != asked[t.trial_id]]
    assert len(short) <= workers and all(t.epochs < asked[t.trial_id] for t in short)
    fidelities = {1, MAX_EPOCHS} if method == "one-epoch" else {2, 6, 17, MAX_EPOCHS}  # eta 3 from 1 to 50, rounded
    assert set(asked.values()) <= fidelities and len(set(asked.values())) > 1
    again, _ = simulate(surrogate, TASK, method, seed=3, workers=workers, budget=BUDGET)
    other, _ = simulate(surrogate, TASK, method, seed=4, workers=workers, budget=BUDGET)
    assert events == again
    assert [e.accuracy for e in events] != [e.accuracy for e in other]


@pytest.mark.parametrize("method", ["muratune", "random-asha-promotion"])
def test_promotion_asha_passes_a_rung_only_when_promoted_and_reproduces(surrogate: Surrogate, method: str) -> None:
    from bench.lcbench.jobs import simulate
    from muratune.search.promotion import PromotionASHA

    events, controller = simulate(surrogate, TASK, method, seed=2, workers=4, budget=BUDGET)
    scheduler = controller.scheduler
    assert isinstance(scheduler, PromotionASHA) and scheduler.levels == [2, 6, 18]  # muratune's grace 2, rf 3
    assert len(events) == len({(e.trial_id, e.epoch) for e in events}) == BUDGET
    for level in scheduler.levels:
        beyond = {t.trial_id for t in controller.trials if t.epochs > level}
        recorded = scheduler.rungs[level]
        assert beyond <= scheduler.promoted[level]  # a trial trains past a rung only once promoted
        assert len({t.trial_id for t in controller.trials if t.epochs >= level}) == len(recorded)
    assert any(t.status == "PAUSED" for t in controller.trials)  # trials left at their rung, never stopped
    assert any(t.epochs == MAX_EPOCHS for t in controller.trials)
    again, _ = simulate(surrogate, TASK, method, seed=2, workers=4, budget=BUDGET)
    other, _ = simulate(surrogate, TASK, method, seed=3, workers=4, budget=BUDGET)
    assert events == again and [e.accuracy for e in events] != [e.accuracy for e in other]


def test_promotion_start_up_ends_on_trials_paused_at_the_first_rung(surrogate: Surrogate) -> None:
    from bench.lcbench.jobs import simulate
    from muratune.search.rung_sampler import RungModelSampler

    overrides = ["optuna.startup_trials_per_worker=5"]  # start-up outlasts the first trials' pauses
    _, controller = simulate(surrogate, TASK, "muratune", seed=0, workers=4, budget=BUDGET, overrides=overrides)
    optuna_search = controller.searcher.searcher  # inside the promotion limiter
    sampler, study = optuna_search._sampler, optuna_search._ot_study
    assert isinstance(sampler, RungModelSampler) and sampler.startup_on_first_rung
    assert sampler.n_startup_trials == 20  # 5 per worker
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) < sampler.n_startup_trials <= len(study.trials)  # paused trials stay RUNNING in Optuna
    assert sampler.started_up(study)
    sampler.startup_on_first_rung = False
    assert not sampler.started_up(study)  # counting finished trials only would never leave start-up


def test_sobol_start_up_runs_in_the_search_and_reproduces(surrogate: Surrogate) -> None:
    from bench.lcbench.jobs import simulate

    events, controller = simulate(surrogate, TASK, "muratune", 2, workers=4, budget=BUDGET)  # sobol: the default
    assert controller.searcher.searcher._sampler._sobol is not None
    assert len(events) == len({(e.trial_id, e.epoch) for e in events}) == BUDGET
    study = controller.searcher.searcher._ot_study
    drawn = study._storage.get_study_system_attrs(study._study_id)
    assert any(key.startswith("qmc:") for key in drawn)  # the Sobol sequence drew the start-up trials
    again, _ = simulate(surrogate, TASK, "muratune", 2, workers=4, budget=BUDGET)
    plain, _ = simulate(surrogate, TASK, "muratune", 2, workers=4, budget=BUDGET, overrides=["optuna.startup=random"])
    assert events == again and events != plain


def test_an_anchor_whose_library_is_missing_says_how_to_install_it() -> None:
    from bench.lcbench.anchors import _library
    from muratune.errors import UserError

    with pytest.raises(UserError, match="needs the no_such_anchor_library package \\(pip install it\\)"):
        _library("no_such_anchor_library", "pip install it")


def test_one_epoch_trains_the_best_first_phase_configurations_fully(surrogate: Surrogate) -> None:
    from bench.lcbench.anchors import ONE_EPOCH_SHARE
    from bench.lcbench.jobs import simulate

    events, controller = simulate(surrogate, TASK, "one-epoch", seed=0, workers=4, budget=BUDGET)
    first = int(ONE_EPOCH_SHARE * BUDGET)
    short, full = controller.trials[:first], controller.trials[first:]
    assert all(t.epochs == 1 for t in short) and full and full[0].epochs == MAX_EPOCHS
    best = sorted(short, key=lambda t: -t.curve.accuracy[0])
    for rank, trial in enumerate(full):  # the full trials retrain the best one-epoch configurations, best first
        assert trial.config == best[rank].config
    assert min(e.clock_s for e in events if e.trial_id == full[0].trial_id) >= max(
        e.clock_s for e in events if e.trial_id in {t.trial_id for t in short}
    )


@pytest.mark.slow
def test_cli_writes_summary_curves_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.lcbench.report import CURVE_EVERY
    from bench.lcbench.surrogate import BEST_KNOWN_JSON
    from bench.search_scale import main

    out = tmp_path / "scale"
    argv = ["--tasks", str(TASK), "--seeds", "2", "--budget", str(4 * MAX_EPOCHS), "--jobs", "1", "--out", str(out)]
    summary = main([*argv, "--methods", "muratune,stock-optuna-asha,random-asha,random", "--workers", "4"])
    saved = json.loads((out / "summary.json").read_text())
    assert saved["tasks"] == [TASK] and saved["seeds"] == 2 and saved["workers"] == 4
    assert saved["budget_epochs"] == 4 * MAX_EPOCHS
    assert set(saved["regret"]) == set(saved["mean_rank"]) == {"muratune", "stock-optuna-asha", "random-asha", "random"}
    assert saved["fidelity_epochs"] == [2, 51] and 0 <= saved["anytime_regret_auc"]["muratune"] <= 1
    assert saved["speedup_vs_random_asha"] == summary["speedup_vs_random_asha"] >= 0
    assert saved["speedup_vs_random"] == summary["speedup_vs_random"] and len(saved["speedup_vs_random_ci"]) == 2
    assert 0 <= saved["p_muratune_vs_stock"] <= 1 and 0 <= saved["p_muratune_vs_random_asha"] <= 1
    printed = capsys.readouterr().out
    assert "muratune < random-asha on regret" in printed
    assert "muratune reached random-asha's final best: " in printed and "same epoch" in printed
    assert saved["speedup_by_method"]["random"] == 1.0
    assert (out / "curves.png").stat().st_size > 0
    curves = (out / "curves.csv").read_text().splitlines()
    assert curves[0] == "method,workers,task,seed,epochs,wall_s,best,regret"
    assert len(curves) > 1 + 4 * 2 * 4 * MAX_EPOCHS // CURVE_EVERY - 1
    assert (tmp_path / BEST_KNOWN_JSON).is_file() and not (tmp_path / "best_known.json").exists()


def _summary(surrogate: Surrogate, methods: list[str], seeds: int) -> dict:
    from bench.lcbench.jobs import simulate
    from bench.lcbench.measures import RunCurve
    from bench.lcbench.report import aggregate

    runs = []
    for seed in range(seeds):
        for method in methods:
            events, controller = simulate(surrogate, TASK, method, seed=seed, workers=4, budget=2 * MAX_EPOCHS)
            curve = RunCurve.from_events(events)
            runs.append({"task": TASK, "seed": seed, "method": method, "best": curve.best, "clock_s": curve.clock_s})
            runs[-1]["trials"] = len(controller.trials)
    return aggregate(runs, {TASK: 1.0}, [TASK], seeds, 4, 2 * MAX_EPOCHS, methods)


def test_summary_has_the_anytime_measures_and_the_speedup_against_random_asha(surrogate: Surrogate) -> None:
    methods = ["muratune", "stock-optuna-asha", "random-asha", "random"]
    summary = _summary(surrogate, methods, seeds=2)
    assert summary["fidelity_epochs"] == [2, 51] and summary["trial_epochs"] == MAX_EPOCHS
    assert set(summary["anytime_regret_auc"]) == set(summary["mean_rank"]) == set(methods)
    for method in methods:
        assert 0 <= summary["anytime_regret_auc"][method] <= 1
        low, high = summary["anytime_regret_auc_ci"][method]
        assert low <= summary["anytime_regret_auc"][method] <= high
        assert 1 <= summary["mean_rank"][method] <= len(methods)
    # Every share of the budget ranks each method once: the ranks of a task and seed add up to 1 + 2 + ... + n.
    assert sum(summary["mean_rank"].values()) == pytest.approx(len(methods) * (len(methods) + 1) / 2)
    assert summary["speedup_vs_random_asha_by_method"]["random-asha"] == 1.0
    outcomes = summary["speedup_vs_random_asha_outcomes"]
    assert outcomes["random-asha"] == {"sooner": 0.0, "same_epoch": 1.0, "later": 0.0, "never": 0.0}
    for method in methods:
        assert sum(outcomes[method].values()) == pytest.approx(1.0)
    assert summary["speedup_vs_random_asha"] == summary["speedup_vs_random_asha_by_method"]["muratune"] >= 0
    low, high = summary["speedup_vs_random_asha_ci"]
    assert low <= summary["speedup_vs_random_asha"] <= high
    assert summary == _summary(surrogate, methods, seeds=2)  # the seeds reproduce every figure


def test_anytime_measures_of_known_curves() -> None:
    from bench.lcbench.measures import BUDGET_GRID, RunCurve, iqm, normalised_regret, ranks, regret_auc

    curve = RunCurve(best=np.array([0.5, 0.6, 0.6, 0.8]), clock_s=np.arange(4.0))
    assert curve.at_budget_shares(4, np.array([0.25, 0.5, 0.75, 1.0])).tolist() == [0.5, 0.6, 0.6, 0.8]
    assert curve.at_budget_shares(8, np.array([0.25, 1.0])).tolist() == [0.6, 0.8]  # past its end: its last value
    assert normalised_regret(np.array([0.5, 0.8]), low=0.5, high=0.9).tolist() == pytest.approx([1.0, 0.25])
    assert regret_auc(np.full(len(BUDGET_GRID), 0.25)) == pytest.approx(0.25)
    assert ranks(np.array([[0.9, 0.5], [0.7, 0.5], [0.8, 0.1]])).tolist() == [[1, 1.5], [3, 1.5], [2, 3]]
    assert float(iqm(np.array([0.0, 1.0, 2.0, 3.0, 100.0, -100.0, 1.5, 2.5]))) == pytest.approx(1.75)


def test_cli_refuses_unknown_tasks_and_methods(tmp_path: Path) -> None:
    from bench.search_scale import main
    from muratune.errors import UserError

    with pytest.raises(UserError, match="--tasks: 1 is not an LCBench task"):
        main(["--tasks", "1", "--out", str(tmp_path)])
    with pytest.raises(UserError, match="--methods: unknown method 'tpe'"):
        main(["--methods", "tpe,random", "--out", str(tmp_path)])


def test_held_back_tasks_are_every_task_but_the_development_ones(surrogate: Surrogate) -> None:
    from bench.lcbench.surrogate import DEV_TASKS
    from bench.search_scale import held_back_tasks, parse_args

    held_back = held_back_tasks(surrogate)
    assert len(held_back) == len(surrogate.tasks()) - len(DEV_TASKS) > 0
    assert not set(held_back) & set(DEV_TASKS)
    assert parse_args(["--tasks", "held-back"]).tasks == "held-back"


@pytest.mark.slow
def test_promotion_pauses_and_resumes_trials_from_their_checkpoints_in_real_tune(
    ray_session, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bench.lcbench.real_tune as real_tune
    from bench.lcbench.methods import build_method
    from muratune.search.promotion import PromotionASHA

    built: list = []

    def keep_scheduler(*args, **kwargs):  # the real searcher and scheduler, kept to read the scheduler's record
        built.append(build_method(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(real_tune, "build_method", keep_scheduler)
    assert SURROGATE is not None
    budget = 2 * MAX_EPOCHS
    events = real_tune.run_tune(SURROGATE, TASK, "muratune", seed=0, workers=2, budget=budget)
    scheduler = built[0][1]
    assert isinstance(scheduler, PromotionASHA) and scheduler.resumed
    assert len(events) == len({(e.trial_id, e.epoch) for e in events}) == budget
    by_trial: dict[str, list[int]] = {}
    for event in events:
        by_trial.setdefault(event.trial_id, []).append(event.epoch)
    for trial_id, epochs in by_trial.items():  # a resumed trial goes on from its checkpoint, never from epoch 1
        assert epochs == list(range(1, len(epochs) + 1)), trial_id
    assert max(len(e) for e in by_trial.values()) > 6  # promoted past two rungs
