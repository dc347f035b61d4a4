"""The Tune callback behind ``tracking.mlflow``: Ray's ``MLflowLoggerCallback`` with muratune's additions.

See ``muratune.search.tracking`` for what it adds and why; this module imports Ray, that one does not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune.logger.mlflow import MLflowLoggerCallback

from muratune.constants import EPOCH
from muratune.search.summary import trial_state

STATE_TAG = "state"
TRIAL_NAME_TAG = "trial_name"  # set by Ray's callback on every run it starts


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
