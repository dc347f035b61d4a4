"""The LCBench scale benchmark: honest Optuna bookkeeping, each epoch counted once, seeds reproduce, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

from bench.lcbench.surrogate import MAX_EPOCHS, Surrogate, default_surrogate_dir  # noqa: E402

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


def test_stopped_trials_are_pruned_with_their_intermediate_values(surrogate: Surrogate) -> None:
    import optuna

    from bench.lcbench.jobs import simulate

    events, controller = simulate(surrogate, TASK, "muratune", seed=0, workers=4, budget=BUDGET)
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


@pytest.mark.parametrize("method", ["muratune", "bohb", "random", "optuna-hyperband"])
def test_each_epoch_is_counted_once_and_trials_finish_out_of_order(surrogate: Surrogate, method: str) -> None:
    from bench.lcbench.jobs import simulate

    if method == "bohb":
        pytest.importorskip("hpbandster")
    events, controller = simulate(surrogate, TASK, method, seed=1, workers=8, budget=BUDGET)
    assert len(events) == BUDGET
    assert len({(e.trial_id, e.epoch) for e in events}) == BUDGET
    assert sum(t.epochs for t in controller.trials) == BUDGET
    for trial in controller.trials:  # paused and resumed trials (BOHB) continue where they stopped
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


@pytest.mark.slow
def test_cli_writes_summary_curves_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.search_scale import main

    out = tmp_path / "scale"
    argv = ["--tasks", str(TASK), "--seeds", "2", "--budget", str(4 * MAX_EPOCHS), "--jobs", "1", "--out", str(out)]
    summary = main([*argv, "--methods", "muratune,stock-optuna-asha,random", "--workers", "4"])
    saved = json.loads((out / "summary.json").read_text())
    assert saved["tasks"] == [TASK] and saved["seeds"] == 2 and saved["workers"] == 4
    assert saved["budget_epochs"] == 4 * MAX_EPOCHS
    assert set(saved["regret"]) == {"muratune", "stock-optuna-asha", "random"}
    assert saved["speedup_vs_random"] == summary["speedup_vs_random"] and len(saved["speedup_vs_random_ci"]) == 2
    assert 0 <= saved["p_muratune_vs_stock"] <= 1
    assert saved["speedup_by_method"]["random"] == 1.0
    assert (out / "curves.png").stat().st_size > 0
    curves = (out / "curves.csv").read_text().splitlines()
    assert curves[0] == "method,workers,task,seed,epochs,wall_s,best,regret"
    assert len(curves) > 1 + 3 * 2 * 4 * MAX_EPOCHS // 13 - 1
    assert (tmp_path / "best_known.json").is_file()
    assert "muratune" in capsys.readouterr().out


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
