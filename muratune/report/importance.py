"""The experiment's Optuna study: trial numbers and fANOVA hyperparameter importance, with notes when unavailable."""

from __future__ import annotations

import logging
import warnings
from typing import Any

from muratune.layout import OPTUNA_DB
from muratune.report.experiment import Experiment

MIN_COMPLETE_TRIALS = 3


def load_study(exp: Experiment) -> tuple[Any | None, str]:
    """The Optuna study named after the experiment, or None and a note saying why not."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    db = exp.path / OPTUNA_DB
    configured = (exp.config.get("optuna") or {}).get("storage")
    url = f"sqlite:///{db}" if db.is_file() else configured
    if not url:
        return None, f"No Optuna study found ({db} is missing), so no parameter importance."
    try:
        return optuna.load_study(study_name=exp.name, storage=url), ""
    except Exception as err:  # noqa: BLE001 - any storage problem only costs the report one section
        return None, f"Could not open the Optuna study {exp.name!r}: {type(err).__name__}: {str(err)[:200]}"


def trial_numbers(study: Any | None) -> dict[str, int]:
    """Ray trial id -> Optuna trial number (the order trials were asked for)."""
    if study is None:
        return {}
    numbers = {}
    for trial in study.get_trials(deepcopy=False):
        ray_id = trial.user_attrs.get("ray_trial_id")
        if ray_id is not None:
            numbers[str(ray_id)] = trial.number
    return numbers


def param_importances(study: Any | None, seed: int = 0) -> tuple[dict[str, float], str]:
    """fANOVA importance of each searched hyperparameter, or an empty dict and a note explaining why not.

    Only COMPLETE trials count (Optuna's rule), so ASHA-pruned trials do not enter.
    """
    import optuna

    if study is None:
        return {}, ""  # load_study's note already says why
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < MIN_COMPLETE_TRIALS:
        return {}, (
            f"Parameter importance needs at least {MIN_COMPLETE_TRIALS} completed trials with searched "
            f"hyperparameters; this study has {len(complete)}."
        )
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    logging.getLogger("optuna").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (RuntimeError, ValueError) as err:
        return {}, f"Parameter importance could not be computed: {str(err).splitlines()[0][:200]}"
    if not values:
        return {}, "Parameter importance is empty: no hyperparameter varied across the completed trials."
    note = f"fANOVA over {len(complete)} completed trials (pruned trials excluded)."
    if len(complete) < 10:
        note += " With so few trials the importances are very rough."
    return {str(k): float(v) for k, v in values.items()}, note
