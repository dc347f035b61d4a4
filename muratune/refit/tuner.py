"""The refit's Tune runs: one trial per entry (a configuration's fold model, or its full model), on the search's
resources, failure handling and storage rules; shared by the fold models and ``--full``."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from muratune.config import ExperimentConfig
from muratune.constants import EPOCH, METRIC, VAL_AUC
from muratune.errors import UserError
from muratune.layout import TRAIN_RUNS_DIR, TRIALS_DIR, trial_dirname
from muratune.refit.plan import ENTRY, entry_id, refit_dir
from muratune.search.factories import run_config
from muratune.search.resources import trial_resources


def refit_storage(exp_dir: Path, name: str = TRIALS_DIR) -> tuple[str, str]:
    """(storage_path, name) of a refit Tune run: ``<experiment>/refit/<name>``, in the experiment folder as found
    now (so a moved experiment still refits); on a cluster that folder must be shared by the nodes (NFS)."""
    return str(refit_dir(exp_dir)), name


def epochs_settings(config: ExperimentConfig, epochs: int) -> dict:
    """The experiment settings with ``epochs`` epochs per model and no early stopping (no ASHA in a refit)."""
    settings = config.model_dump(mode="json")
    settings["budget"].update(max_epochs=epochs, grace_period=min(epochs, config.budget.grace_period), scheduler="none")
    return settings


def entry_settings(settings: dict, entry: dict) -> dict:
    """Settings for one entry: its own epochs (``--epochs peak``); a fold model trains on the other folds and
    validates (out of fold) on ``entry['fold']``, a full model (``entry['full']``) on the whole train split."""
    out = copy.deepcopy(settings)
    if entry.get("epochs") is not None:
        epochs = int(entry["epochs"])
        grace = min(epochs, int(out["budget"]["grace_period"]))
        out["budget"].update(max_epochs=epochs, grace_period=grace)
    if entry.get("full"):
        out["data"].update(folds=None, fold=None, whole_train=True)
    else:
        out["data"].update(folds=int(entry["folds"]), fold=int(entry["fold"]))
    return out


def refit_trainable(hparams: dict, experiment_config: dict | None = None, train_storage: str | None = None) -> None:
    """Tune function trainable of one entry; the other arguments are bound by ``with_parameters``.

    ``train_storage`` is where a data-parallel model's Train run goes: inside the refit folder, so that
    ``--overwrite`` moves it aside with the rest.
    """
    from muratune.trainables.reporters import TuneReporter
    from muratune.trainables.trial import train_trial

    entry = hparams[ENTRY]
    resolved = entry_settings(experiment_config or {}, entry)
    if int(resolved["resources"]["workers_per_trial"]) > 1:
        from muratune.trainables.distributed import ddp_tune_trainable

        ddp_tune_trainable(dict(entry["hparams"]), resolved, train_storage=train_storage)
    else:
        train_trial(dict(entry["hparams"]), resolved, TuneReporter())


def _trial_dirname(trial: Any) -> str:
    return trial_dirname(entry_id(trial.config[ENTRY]))


def _bound(config: ExperimentConfig, epochs: int, exp_dir: Path) -> Any:
    from ray import tune

    storage_path, _ = refit_storage(exp_dir)
    bound = tune.with_parameters(
        refit_trainable,
        experiment_config=epochs_settings(config, epochs),
        train_storage=f"{storage_path}/{TRAIN_RUNS_DIR}",
    )
    return tune.with_resources(bound, trial_resources(config))


def create_refit_tuner(
    config: ExperimentConfig,
    entries: list[dict],
    epochs: int,
    exp_dir: Path,
    name: str = TRIALS_DIR,
    stop: Any = None,
    verbose: int = 1,
) -> Any:
    """A Tuner over a fixed grid of entries: no searcher, no scheduler, latest checkpoint kept.

    Args:
        config: the experiment config (resources, failure handling, storage).
        entries: the entries to train (`RefitPlan.entries`, or the full models' entries).
        epochs: the most epochs of an entry (each entry may train fewer: its ``epochs``).
        exp_dir: the experiment folder.
        name: the Tune run's folder inside ``refit/``.
        stop: a Tune stopping condition (tests interrupt a refit with one).
        verbose: Tune's console verbosity.
    """
    from ray import tune

    storage_path, name = refit_storage(exp_dir, name)
    reporter = tune.CLIReporter(
        metric_columns={EPOCH: "epoch", METRIC: "oof_kappa", VAL_AUC: "oof_auc"},
        parameter_columns={f"{ENTRY}/trial_id": "configuration", f"{ENTRY}/fold": "fold"},
        max_report_frequency=30,
    )
    return tune.Tuner(
        _bound(config, epochs, exp_dir),
        param_space={ENTRY: tune.grid_search(entries)},
        tune_config=tune.TuneConfig(
            num_samples=1,
            max_concurrent_trials=config.resources.max_concurrent_trials,
            reuse_actors=True,
            trial_dirname_creator=_trial_dirname,
            trial_name_creator=_trial_dirname,
        ),
        run_config=run_config(
            config,
            name,
            storage_path,
            tune.CheckpointConfig(num_to_keep=1),  # the last epoch is the model
            reporter,
            stop=stop,
            verbose=verbose,
        ),
    )


def can_restore(exp_dir: Path, name: str = TRIALS_DIR) -> bool:
    """Whether a refit Tune run ``name`` left a restorable state."""
    from ray import tune

    storage_path, name = refit_storage(exp_dir, name)
    return bool(tune.Tuner.can_restore(f"{storage_path}/{name}"))


def restore_refit_tuner(
    config: ExperimentConfig, epochs: int, exp_dir: Path, name: str = TRIALS_DIR, retry_failed: bool = True
) -> Any:
    """Restore an interrupted refit run: finished entries are kept, unfinished ones (and failed ones, with
    ``retry_failed``) continue from their checkpoints."""
    from ray import tune

    storage_path, name = refit_storage(exp_dir, name)
    path = f"{storage_path}/{name}"
    if not tune.Tuner.can_restore(path):
        raise UserError(f"{path}: no restorable refit state here; start the refit again with --overwrite")
    return tune.Tuner.restore(
        path, trainable=_bound(config, epochs, exp_dir), resume_unfinished=True, resume_errored=retry_failed
    )
