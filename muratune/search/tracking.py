"""MLflow tracking of a search with Ray Tune's ``MLflowLoggerCallback`` (see ``mlflow_callback.py``): run per trial.

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
from typing import TYPE_CHECKING

from muratune.config import ExperimentConfig
from muratune.errors import UserError
from muratune.layout import MLFLOW_ARTIFACTS, MLFLOW_DB, RESOLVED_CONFIG

if TYPE_CHECKING:
    from muratune.search.mlflow_callback import MuratuneMLflowCallback


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
    from muratune.search.mlflow_callback import MuratuneMLflowCallback

    return MuratuneMLflowCallback(
        uri,
        experiment_name=config.name,
        max_epochs=config.budget.max_epochs,
        resolved_config=str(exp_dir / RESOLVED_CONFIG),
        artifact_location=artifact_location(uri),
    )
