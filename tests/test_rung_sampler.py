"""The rung-model sampler: Optuna's TPE fitted on one ASHA rung's values, the study itself left as it was."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.samplers import RandomSampler

from muratune.config import load_config
from muratune.search.factories import create_sampler, create_searcher
from muratune.search.rung_sampler import RungModelSampler, RungView, asha_levels

X = optuna.distributions.FloatDistribution(0.0, 1.0)
LEVELS = [2, 6, 18, 50]


def _study_where_rung_6_and_the_full_runs_disagree() -> optuna.Study:
    """40 trials stopped at epoch 6 whose value there grows with x; 4 full runs, slow starters (0.1 at the rungs),
    whose final value falls with x."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(40):
        trial = study.ask({"x": X})
        x = trial.params["x"]
        trial.report(0.5 * x, 2)
        trial.report(x, 6)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    for x in (0.05, 0.1, 0.15, 0.9):
        study.enqueue_trial({"x": x})
        trial = study.ask({"x": X})
        for epoch in (2, 6, 18):
            trial.report(0.1, epoch)
        trial.report(1 - x, 50)
        study.tell(trial, 1 - x)
    return study


def test_asha_levels_are_rays_rungs_and_the_full_run() -> None:
    assert asha_levels(2, 3, 50) == [2, 6, 18, 50]
    assert asha_levels(3, 3, 30) == [3, 9, 27, 30]
    assert asha_levels(1, 4, 16) == [1, 4, 16]


def test_the_model_is_fitted_on_the_highest_rung_with_enough_values() -> None:
    study = _study_where_rung_6_and_the_full_runs_disagree()
    assert RungModelSampler(LEVELS, min_trials=10, n_startup_trials=10).model_level(study) == 6
    assert RungModelSampler(LEVELS, min_trials=4, n_startup_trials=10).model_level(study) == 50
    assert RungModelSampler(LEVELS, min_trials=100, n_startup_trials=10).model_level(study) is None
    view = RungView(study, 6, 50)
    trials = view._get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 44
    assert all(t.value == t.intermediate_values[6] for t in trials)


def _sampled_x(sampler: optuna.samplers.BaseSampler, study: optuna.Study, n: int = 30) -> list[float]:
    values = []
    for _ in range(n):
        trial = study.ask({"x": X})
        values.append(trial.params["x"])
        study.tell(trial, state=optuna.trial.TrialState.FAIL)  # a failed trial changes no model
    return values


def test_tpe_on_the_rung_view_follows_the_rungs_values_where_plain_tpe_follows_the_full_runs() -> None:
    study = _study_where_rung_6_and_the_full_runs_disagree()
    study.sampler = RungModelSampler(LEVELS, min_trials=10, n_startup_trials=10, seed=1)
    rung = _sampled_x(study.sampler, study)
    plain_study = _study_where_rung_6_and_the_full_runs_disagree()
    plain_study.sampler = optuna.samplers.TPESampler(seed=1, n_startup_trials=10)
    plain = _sampled_x(plain_study.sampler, plain_study)
    assert np.median(rung) > 0.7
    assert np.median(plain) < 0.3


def test_the_study_stays_the_record() -> None:
    study = _study_where_rung_6_and_the_full_runs_disagree()
    before = [(t.state, t.value, dict(t.intermediate_values)) for t in study.get_trials()]
    study.sampler = RungModelSampler(LEVELS, min_trials=10, n_startup_trials=10, seed=0)
    _sampled_x(study.sampler, study, n=3)
    after = [(t.state, t.value, dict(t.intermediate_values)) for t in study.get_trials()[: len(before)]]
    assert after == before
    states = [t.state for t in study.get_trials()]
    assert states.count(optuna.trial.TrialState.PRUNED) == 40
    assert states.count(optuna.trial.TrialState.COMPLETE) == 4


def test_running_trials_are_pending_in_the_view() -> None:
    study = _study_where_rung_6_and_the_full_runs_disagree()
    running = study.ask({"x": X})
    running.report(0.3, 2)
    view = RungView(study, 6, 50)
    pending = view._get_trials(states=(optuna.trial.TrialState.RUNNING,))
    assert [t.number for t in pending] == [running.number]


def test_the_config_builds_the_rung_model_on_ashas_rungs() -> None:
    values = {"budget.max_epochs": 30, "budget.grace_period": 3, "resources.max_concurrent_trials": 2}
    config = load_config(None, overrides=["optuna.sampler=rung-tpe", "optuna.rung_min_trials=12"], values=values)
    sampler = create_sampler(config)
    assert isinstance(sampler, RungModelSampler)
    assert sampler.levels == [3, 9, 27, 30]
    assert sampler.min_trials == 12
    assert sampler.n_startup_trials == config.optuna.startup_trials(2)
    limiter = create_searcher(config, storage=None)
    assert isinstance(limiter.searcher._sampler, RungModelSampler)


def test_a_bad_rung_min_trials_is_refused_in_one_line() -> None:
    from muratune.errors import UserError

    with pytest.raises((UserError, ValueError)) as err:
        load_config(None, overrides=["optuna.rung_min_trials=1"])
    assert "rung_min_trials" in str(err.value)


def test_trials_stopped_below_the_rung_are_left_out_or_shown_as_bad() -> None:
    study = _study_where_rung_6_and_the_full_runs_disagree()
    running = optuna.trial.TrialState.RUNNING
    assert not RungView(study, 18, 50)._get_trials(states=(running,))
    bad = RungView(study, 18, 50, stopped_as_bad=True)
    assert len(bad._get_trials(states=(running,))) == 40
    assert len(bad._get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 4


def test_a_small_search_samples_at_random_then_with_plain_tpe_until_a_rung_has_enough_values() -> None:
    study = _study_where_rung_6_and_the_full_runs_disagree()
    trial = study.ask({"x": X})
    late = RungModelSampler(LEVELS, min_trials=10, n_startup_trials=100)
    assert late._model_study(study, study._storage.get_trial(trial._trial_id)) is None
    small = RungModelSampler(LEVELS, min_trials=100, n_startup_trials=10)
    assert small._model_study(study, study._storage.get_trial(trial._trial_id)) is study


def test_the_default_config_builds_the_rung_model() -> None:
    sampler = create_sampler(load_config(None))
    assert isinstance(sampler, RungModelSampler)
    assert sampler.min_trials == 10 and sampler.stopped_as_bad


def test_stopped_as_bad_without_the_constant_liar_is_refused_in_one_line() -> None:
    from muratune.errors import UserError

    with pytest.raises(UserError) as err:
        load_config(None, overrides=["optuna.constant_liar=false"])
    assert "constant_liar" in str(err.value) and "\n" not in str(err.value)
    load_config(None, overrides=["optuna.constant_liar=false", "optuna.rung_stopped_as_bad=false"])
    load_config(None, overrides=["optuna.constant_liar=false", "optuna.sampler=tpe"])


SPACE = {
    "x": X,
    "lr": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True),
    "depth": optuna.distributions.IntDistribution(1, 4),
    "backbone": optuna.distributions.CategoricalDistribution(["resnet10t", "resnet18", "efficientnet_b0"]),
}


def _start_up(sampler: optuna.samplers.BaseSampler, n: int) -> list[dict]:
    """The parameters of ``n`` trials asked of ``sampler`` and told at once (so the model never starts)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    params = []
    for _ in range(n):
        trial = study.ask(SPACE)
        params.append(trial.params)
        study.tell(trial, 0.5)
    return params


def test_sobol_start_up_trials_are_optunas_scrambled_sobol_sequence_and_reproduce() -> None:
    import warnings

    sobol = RungModelSampler(LEVELS, min_trials=10, n_startup_trials=100, seed=3, startup="sobol")
    drawn = _start_up(sobol, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        reference = optuna.samplers.QMCSampler(scramble=True, seed=3, independent_sampler=RandomSampler(seed=3))
    assert drawn[1:] == _start_up(reference, 16)[1:]  # the first trial is the independent (random) sampler's
    assert drawn == _start_up(RungModelSampler(LEVELS, 10, n_startup_trials=100, seed=3, startup="sobol"), 16)
    assert drawn != _start_up(RungModelSampler(LEVELS, 10, n_startup_trials=100, seed=3), 16)
    xs = sorted(p["x"] for p in drawn)
    assert (
        max(np.diff([0.0, *xs, 1.0])) < 0.2
    )  # 15 Sobol points and a random one leave no gap of a fifth in any coordinate


def test_sobol_start_up_hands_over_to_the_model() -> None:
    study = _study_where_rung_6_and_the_full_runs_disagree()
    sampler = RungModelSampler(LEVELS, 10, n_startup_trials=10, seed=0, startup="sobol", multivariate=False)
    study.sampler = sampler
    trial = study.ask({"x": X})
    frozen = study._storage.get_trial(trial._trial_id)
    assert sampler.infer_relative_search_space(study, frozen) == {}  # TPE's, not the Sobol sequence's
    assert sampler._model_study(study, frozen) is not None


def test_sobol_start_up_is_built_from_the_config_and_refused_without_rung_tpe() -> None:
    from muratune.errors import UserError

    assert create_sampler(load_config(None))._sobol is not None  # the default, under promotion-type ASHA
    assert create_sampler(load_config(None, overrides=["optuna.startup=random"]))._sobol is None
    assert create_sampler(load_config(None, overrides=["budget.scheduler=asha"]))._sobol is None  # follows it
    assert create_sampler(load_config(None, overrides=["budget.scheduler=asha", "optuna.startup=sobol"]))._sobol
    with pytest.raises(UserError) as err:
        load_config(None, overrides=["optuna.startup=sobol", "optuna.sampler=tpe"])
    assert "optuna.startup: sobol needs optuna.sampler: rung-tpe (it is tpe)" in str(err.value) and "\n" not in str(
        err.value
    )


def test_sobol_start_up_does_not_warn_of_conditions_in_a_one_backbone_search() -> None:
    import logging

    from muratune.search.factories import create_scheduler
    from muratune.search.space import create_search_space

    one_backbone = {"space.backbone": {"type": "choice", "values": ["resnet10t"]}}
    config = load_config(None, values=one_backbone, overrides=["optuna.startup=sobol", "optuna.seed=0"])
    searcher = create_searcher(config, storage=None, scheduler=create_scheduler(config))
    searcher.set_search_properties("val_kappa", "max", create_search_space(config.space))
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("optuna").addHandler(handler)
    try:
        suggested = [searcher.searcher.suggest(f"t{i}") for i in range(3)]  # running together, none finished
    finally:
        logging.getLogger("optuna").removeHandler(handler)
    assert len({s["lr"] for s in suggested}) == 3
    assert not [r for r in records if "conditions" in r.getMessage()]
