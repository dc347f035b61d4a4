"""The ground floor: every folder and file name one stage hands to the next, and the helpers that locate them.

Every stage takes its names from here (as nnU-Net's ``paths.py`` does); no stage imports another stage to learn
where a file lives. An experiment folder, ``<storage>/<name>/``, holds after all stages have run (one name a line;
``tests/test_docs.py`` checks that every name drawn here is defined below and that every name defined below is
drawn, and that the README's drawing agrees)::

    <storage>/<name>/
        .muratune                   marker: muratune made this folder (so does every output folder a stage makes)
        resolved_config.yaml        the experiment config after --set overrides            (search)
        optuna.db                   the Optuna study (ASHA-stopped trials PRUNED)           (search)
        cache.json                  the image cache used and the images it left out         (search, local)
        search_summary.csv          one row per trial: state, hyperparameters, kappa, error (search)
        time_budget_reached         left only when budget.time_budget_s ended the search    (search)
        mlflow.db                   MLflow runs of the trials (tracking.mlflow: true)       (search)
        mlartifacts/                their artifacts, beside a local MLflow store            (search)
        trials/                     Ray Tune's run folder                                   (search)
            trial_<id>/
                progress.csv        Ray Tune's per-epoch results
                checkpoint_<n>/
                    model.safetensors       weights
                    trial.json              backbone, hyperparameters, data config, metrics, experiment config
                    state.json              resumable loop state (epoch, schedule, history)
                    optimizer.safetensors   optimizer state, only while the trial can still resume
                    optimizer.json          its metadata, likewise
                    val_images.parquet      internal-validation predictions, per image
                    val_studies.parquet     and per study
        trials_train/               Train runs of data-parallel trials (their checkpoints)  (search)
        refit/                      cross-validated retraining of the best configurations   (refit)
            refit.json              the plan: configurations, folds, epochs, split seed
            refit_summary.csv       one row per fold model
            oof_images.parquet      every train image's out-of-fold probability
            trials/trial_<id>_fold<k>/checkpoint_<n>/       the fold models
            full_summary.csv        one row per full model (--full)
            full/trial_<id>_full/checkpoint_<n>/            the full models: whole train split (--full)
        trials_test/                each candidate's best checkpoint on the test split      (ensemble)
            <trial_id>.parquet
            metrics.csv
        ensemble/                                                                           (ensemble, refit)
            <strategy>/             a self-contained predictor
                ensemble.json
                members/<name>/model.safetensors
                members/<name>/trial.json
                test_studies.parquet
                test_metrics.json
            cv/                     the same, selected on out-of-fold predictions           (refit)
            cv-full/                cv's choice, one model per configuration on all train  (refit --full)
            default.json            which predictor is the default, and the evidence        (refit)
        cams/                                                                               (cam)
            index.html              the overlays, grouped by study
            cams.json               the CAM layers used and one entry per image
            score.json              pointing game, IoU, chance (--score)
            images/                 <slug>.png overlays and <slug>.json boxes
        report/                                                                             (report)
            index.html              self-contained
            report.md
            leaderboard.csv
            metrics.json
            plots/
            cams/                   a few CAM overlays copied from cams/

Checkpoints and ensembles are also read outside an experiment (copied anywhere), so their file names live here too.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from muratune.config import ExperimentConfig

# ------------------------------------------------------------------------------------------------ experiment
RESOLVED_CONFIG = "resolved_config.yaml"
OPTUNA_DB = "optuna.db"
CACHE_JSON = "cache.json"  # the shared cache a local search used, with the images it left out ("excluded")
SUMMARY_CSV = "search_summary.csv"
TIME_BUDGET_REACHED = "time_budget_reached"  # left by the time budget when it ended the search (not by an interruption)
TRIALS_DIR = "trials"
TRAIN_RUNS_DIR = "trials_train"  # the Train runs of data-parallel trials, beside trials/ (and in refit/)
MLFLOW_DB = "mlflow.db"  # the MLflow store of ``tracking.mlflow: true``
MLFLOW_ARTIFACTS = "mlartifacts"  # artifacts of a local (SQLite) MLflow store, beside its database
TRIAL_DIR_PREFIX = "trial_"
PROGRESS_CSV = "progress.csv"  # Ray Tune's per-trial results
CHECKPOINT_PREFIX = "checkpoint_"
REFIT_DIR = "refit"
REFIT_PLAN = "refit.json"  # refit/: the configurations, folds, epochs and split seed
REFIT_SUMMARY = "refit_summary.csv"  # refit/: one row per fold model
OOF_IMAGES = "oof_images.parquet"  # refit/: every train image's out-of-fold probability, per configuration
FULL_DIR = "full"  # refit/full: the Tune run of the full models (`refit --full`)
FULL_SUMMARY = "full_summary.csv"  # refit/: one row per full model
CV_ENSEMBLE = "cv"  # ensemble/cv: the ensemble selected on out-of-fold predictions
CV_FULL_ENSEMBLE = "cv-full"  # ensemble/cv-full: cv's configurations retrained once on the whole train split
DEFAULT_PREDICTOR = "default.json"  # ensemble/default.json: which ensemble is the default predictor, and why
TRIALS_TEST_DIR = "trials_test"
TRIALS_TEST_METRICS = "metrics.csv"
ENSEMBLE_DIR = "ensemble"
CAMS_DIR = "cams"
REPORT_DIR = "report"

# ------------------------------------------------------------------------------------------------ checkpoint
MODEL_FILE = "model.safetensors"
TRIAL_FILE = "trial.json"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
OPTIMIZER_META_FILE = "optimizer.json"
VAL_IMAGES_FILE = "val_images.parquet"
VAL_STUDIES_FILE = "val_studies.parquet"

# ------------------------------------------------------------------------------------------------ ensemble
ENSEMBLE_FILE = "ensemble.json"
MEMBERS_DIR = "members"
TEST_STUDIES = "test_studies.parquet"
TEST_METRICS = "test_metrics.json"

# ------------------------------------------------------------------------------------------------ cams
CAM_IMAGES_DIR = "images"
CAM_INDEX_HTML = "index.html"
CAMS_JSON = "cams.json"
CAM_SCORE_JSON = "score.json"

# ------------------------------------------------------------------------------------------------ report
REPORT_INDEX_HTML = "index.html"
REPORT_MD = "report.md"
LEADERBOARD_CSV = "leaderboard.csv"
METRICS_JSON = "metrics.json"
PLOTS_DIR = "plots"
REPORT_CAMS_DIR = "cams"

# ------------------------------------------------------------------------------------------------ output folders
# A folder muratune made holds MARKER, a JSON file naming its kind; only such folders are ever replaced. Folders
# written before markers existed are recognised by the files their kind always writes (KIND_SIGNATURES).
MARKER = ".muratune"
BOXES_CSV = "boxes.csv"  # a synthetic dataset's ground-truth boxes
DATASET_KIND = "dataset"
EXPERIMENT_KIND = "experiment"
REFIT_KIND = "refit"
ENSEMBLE_KIND = "ensemble"
CAMS_KIND = "cams"
REPORT_KIND = "report"
CHECKPOINTS_KIND = "checkpoints"  # `muratune train`'s output
KIND_SIGNATURES: dict[str, tuple[str, ...]] = {
    DATASET_KIND: (BOXES_CSV,),
    EXPERIMENT_KIND: (RESOLVED_CONFIG,),
    REFIT_KIND: (REFIT_PLAN,),
    ENSEMBLE_KIND: (ENSEMBLE_FILE,),
    CAMS_KIND: (CAMS_JSON,),
    REPORT_KIND: (METRICS_JSON, LEADERBOARD_CSV),
    CHECKPOINTS_KIND: (),
}


def is_remote(uri: str) -> bool:
    """True for storage URIs such as ``s3://`` or ``gs://``."""
    return "://" in uri and not uri.startswith("file://")


def experiment_dir(config: ExperimentConfig) -> Path:
    """The local experiment folder (metadata, Optuna study, summary); trials go to `trials_storage`."""
    storage = config.storage
    if is_remote(storage):
        return Path("runs") / config.name
    return Path(storage.removeprefix("file://")).expanduser().resolve() / config.name


def trials_storage(config: ExperimentConfig) -> tuple[str, str]:
    """Ray Tune's ``(storage_path, name)`` for the search's trials: ``<storage>/<name>/trials``."""
    if is_remote(config.storage):
        return f"{config.storage.rstrip('/')}/{config.name}", TRIALS_DIR
    return str(experiment_dir(config)), TRIALS_DIR


def optuna_storage_url(config: ExperimentConfig) -> str:
    """The Optuna study's storage: the configured database URL, or SQLite in the experiment folder."""
    return config.optuna.storage or f"sqlite:///{experiment_dir(config) / OPTUNA_DB}"


def trial_dirname(trial_id: str) -> str:
    """A trial's folder name: ``trial_<id>``."""
    return f"{TRIAL_DIR_PREFIX}{trial_id}"


def trial_dir(exp_dir: Path, trial_id: str) -> Path:
    """Where a trial's checkpoints and ``progress.csv`` lie in a local experiment."""
    return exp_dir / TRIALS_DIR / trial_dirname(trial_id)


def ensemble_dir(exp_dir: Path, strategy: str) -> Path:
    """Where an ensemble strategy's predictor lies in an experiment."""
    return exp_dir / ENSEMBLE_DIR / strategy


def checkpoint_in_experiment(exp_dir: Path, recorded: str) -> Path | None:
    """Where a checkpoint recorded in ``search_summary.csv`` lies inside ``exp_dir``; None if it lies nowhere there.

    A recorded path outside the folder (the experiment was moved, copied or synced from cloud storage) is re-rooted
    at its last ``trials/`` (or ``trials_train/``) part. Checkpoints are only ever read from inside the experiment
    being worked on, never through an absolute path into another one.
    """
    exp = exp_dir.resolve()
    path = Path(recorded)
    if not path.resolve().is_relative_to(exp):
        roots = (TRIALS_DIR, TRAIN_RUNS_DIR)
        at = [i for i, part in enumerate(path.parts) if part in roots]
        if not at:
            return None
        path = exp.joinpath(*path.parts[at[-1] :])
    resolved = path.resolve()
    return resolved if resolved.is_relative_to(exp) else None
