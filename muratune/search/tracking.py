"""MLflow tracking of a search with Ray Tune's ``MLflowLoggerCallback``: one MLflow run per trial.

Ray 2.60 keeps the callback in ``ray.air.integrations.mlflow``. It runs on the Tune driver, so only the driver needs
to reach the tracking URI (workers never talk to MLflow). muratune adds to it, in a small subclass:

- the per-epoch metrics without Tune's copy of the config (``config/lr`` ...): the params already hold it;
- each run's final state (COMPLETE, PRUNED or FAIL, as in the search summary) as the tag ``state``;
- the experiment's ``resolved_config.yaml`` as an artifact;
- on ``--resume``, a restored trial continues its own run (found by its ``trial_name`` tag) instead of a new one;
- artifacts of a local store kept beside it (``mlartifacts/``), not in the current directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.air.integrations.mlflow import MLflowLoggerCallback

from muratune.config import ExperimentConfig
from muratune.constants import EPOCH
from muratune.errors import UserError
from muratune.search.tuner import RESOLVED_CONFIG, trial_state

MLFLOW_DB = "mlflow.db"  # the store of ``tracking.mlflow: true``, inside the experiment folder
MLFLOW_ARTIFACTS = "mlartifacts"  # artifacts of a local (SQLite) store, beside its database
STATE_TAG = "state"
TRIAL_NAME_TAG = "trial_name"  # set by Ray's callback on every run it starts


def tracking_uri(config: ExperimentConfig, exp_dir: Path) -> str | None:
    """The MLflow tracking URI of a search (None when tracking is off); ``true`` means SQLite in ``exp_dir``."""
    value = config.tracking.mlflow
    if value is False:
        return None
    if value is True:
        return f"sqlite:///{exp_dir / MLFLOW_DB}"
    return str(value)


def artifact_location(uri: str) -> str | None:
    """Where a new MLflow experiment keeps artifacts: beside a SQLite database, else the store's own default."""
    if not uri.startswith("sqlite:///"):
        return None  # a tracking server or a remote database decides for itself
    database = Path(uri.removeprefix("sqlite:///")).expanduser().resolve()
    return (database.parent / MLFLOW_ARTIFACTS).as_uri()


def require_mlflow(config: ExperimentConfig) -> None:
    """Refuse a search with tracking on when MLflow is not installed, with one line naming the extra."""
    if config.tracking.mlflow is False:
        return
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise UserError(
            "tracking.mlflow is set but MLflow is not installed; pip install 'muratune[mlflow]' (or set it to false)"
        ) from None


def create_mlflow_callback(config: ExperimentConfig, exp_dir: Path) -> MuratuneMLflowCallback | None:
    """The Tune callback that logs the search to MLflow, or None when ``tracking.mlflow`` is off.

    Raises:
        UserError: tracking is on and MLflow is not installed.
    """
    uri = tracking_uri(config, exp_dir)
    if uri is None:
        return None
    require_mlflow(config)
    return MuratuneMLflowCallback(
        uri,
        experiment_name=config.name,
        max_epochs=config.budget.max_epochs,
        resolved_config=str(exp_dir / RESOLVED_CONFIG),
        artifact_location=artifact_location(uri),
    )


class MuratuneMLflowCallback(MLflowLoggerCallback):
    """Ray's MLflowLoggerCallback with a state tag, the resolved config as artifact, and runs continued on resume.

    Args:
        tracking_uri: the MLflow tracking URI.
        experiment_name: the MLflow experiment (the search's name); created if missing.
        max_epochs: a trial's full budget, which separates COMPLETE from PRUNED.
        resolved_config: the experiment's ``resolved_config.yaml``, logged to each new run.
        artifact_location: artifact root of a newly created MLflow experiment (None: the store's default).
        **kwargs: passed to ``MLflowLoggerCallback``.
    """

    def __init__(
        self,
        tracking_uri: str,
        *,
        experiment_name: str,
        max_epochs: int,
        resolved_config: str | None = None,
        artifact_location: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(tracking_uri, experiment_name=experiment_name, **kwargs)
        self.max_epochs = max_epochs
        self.resolved_config = resolved_config
        self.artifact_location = artifact_location

    def setup(self, *args: Any, **kwargs: Any) -> None:
        """Create the MLflow experiment with our artifact location if needed, then set up as Ray does."""
        from mlflow import MlflowClient

        self.mlflow_util.setup_mlflow(
            tracking_uri=self.tracking_uri,
            registry_uri=self.registry_uri,
            experiment_name=self.experiment_name,
            tracking_token=self.tracking_token,
            artifact_location=self.artifact_location,
            create_experiment_if_not_exists=True,
        )
        super().setup(*args, **kwargs)
        self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)

    def log_trial_start(self, trial: Any) -> None:
        """Start (or, for a trial restored by ``--resume``, find again) the trial's run and log its params."""
        created = False
        if trial not in self._trial_runs:
            existing = self._existing_run(str(trial))
            if existing is not None:
                self._trial_runs[trial] = existing
            created = existing is None
        super().log_trial_start(trial)
        if created and self.resolved_config and Path(self.resolved_config).is_file():
            self._client.log_artifact(self._trial_runs[trial], self.resolved_config)

    def _existing_run(self, trial_name: str) -> str | None:
        """The id of this experiment's run for ``trial_name``, if an earlier (interrupted) session started one."""
        runs = self._client.search_runs(
            [self.mlflow_util.experiment_id], filter_string=f"tags.{TRIAL_NAME_TAG} = '{trial_name}'", max_results=1
        )
        return runs[0].info.run_id if runs else None

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        """Log a result's metrics as Ray does, less the copy of the trial's config that Tune adds to each result."""
        super().log_trial_result(iteration, trial, {k: v for k, v in result.items() if k != "config"})

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        """Tag the run with the trial's final state, then end it as Ray does."""
        run_id = self._trial_runs.get(trial)
        if run_id is not None:
            result = trial.last_result or {}
            epochs = int(result.get(EPOCH, result.get("training_iteration", 0)) or 0)
            self._client.set_tag(run_id, STATE_TAG, trial_state(failed, epochs, self.max_epochs))
        super().log_trial_end(trial, failed=failed)
