"""The ground floor: every folder and file name one stage hands to the next, and the helpers that locate them.

Every stage takes its names from here (as nnU-Net's ``paths.py`` does); no stage imports another stage to learn
where a file lives. An experiment folder, ``<storage>/<name>/``, holds after all stages have run::

    <storage>/<name>/
        resolved_config.yaml        the experiment config after --set overrides      (search)
        optuna.db                   the Optuna study (ASHA-stopped trials PRUNED)     (search)
        cache.json                  the image cache used and the images it left out   (search, local)
        search_summary.csv          one row per trial: state, hyperparameters, kappa   (search)
        mlflow.db, mlartifacts/     MLflow runs of the trials (tracking.mlflow: true)  (search)
        trials/                     Ray Tune's run folder                              (search)
            trial_<id>/checkpoint_<n>/
                model.safetensors   weights
                trial.json          backbone, hyperparameters, data config, metrics, experiment config
                state.json          resumable loop state (epoch, schedule, history)
                optimizer.safetensors + optimizer.json   (latest checkpoint only)
                val_images.parquet, val_studies.parquet  internal-validation predictions
        refit/                      cross-validated retraining of the best configurations (refit)
            refit.json, refit_summary.csv, oof_images.parquet, trials/trial_<id>_fold<k>/checkpoint_<n>/
        trials_test/                each candidate's best checkpoint scored on the test split  (ensemble)
            <trial_id>.parquet, metrics.csv
        ensemble/<strategy>/        a self-contained predictor                          (ensemble, refit)
            ensemble.json, members/<name>/{model.safetensors,trial.json},
            test_studies.parquet, test_metrics.json
        cams/                       overlays, boxes, index.html, cams.json, score.json  (cam)
        report/                     index.html, report.md, leaderboard.csv, metrics.json, plots/  (report)

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
MLFLOW_DB = "mlflow.db"  # the MLflow store of ``tracking.mlflow: true``
MLFLOW_ARTIFACTS = "mlartifacts"  # artifacts of a local (SQLite) MLflow store, beside its database
TRIAL_DIR_PREFIX = "trial_"
PROGRESS_CSV = "progress.csv"  # Ray Tune's per-trial results
CHECKPOINT_PREFIX = "checkpoint_"
REFIT_DIR = "refit"
REFIT_PLAN = "refit.json"  # refit/: the configurations, folds, epochs and split seed
REFIT_SUMMARY = "refit_summary.csv"  # refit/: one row per fold model
OOF_IMAGES = "oof_images.parquet"  # refit/: every train image's out-of-fold probability, per configuration
CV_ENSEMBLE = "cv"  # ensemble/cv: the ensemble selected on out-of-fold predictions
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
