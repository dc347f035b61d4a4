"""The search's summary: one row per trial in Optuna's terms (COMPLETE, PRUNED, FAIL, RUNNING), and its table."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from muratune.config import HYPERPARAMETERS, ExperimentConfig
from muratune.constants import EPOCH, METRIC, MODE, VAL_AUC
from muratune.errors import UserError
from muratune.layout import OPTUNA_DB, TRIAL_DIR_PREFIX, experiment_dir, optuna_storage_url

logger = logging.getLogger(__name__)


def unfinished_trials(results: Any, config: ExperimentConfig) -> set[str]:
    """Ids of the trials that neither failed nor finished: interrupted, or never started.

    Tune marks the last result of a trial that ran to its end or that ASHA stopped with ``done``; an interrupted
    trial's last result lacks it, and a trial that never started has no result at all. Promotion-type ASHA stops
    the trials left paused at the end of its search without a result, so a trial the Optuna study records as
    finished is finished too. (A search its time budget ended has no unfinished trials, although their results
    look the same: see `muratune.search.stopper`.)
    """
    unfinished = set()
    for result in results:
        metrics = result.metrics or {}
        if result.error is None and not metrics.get("done", False):
            unfinished.add(str(metrics.get("trial_id") or Path(result.path).name.removeprefix(TRIAL_DIR_PREFIX)))
    return unfinished - finished_in_study(config) if unfinished else unfinished


def finished_in_study(config: ExperimentConfig) -> set[str]:
    """Ray ids of the trials the experiment's Optuna study records as finished (COMPLETE, PRUNED or FAIL)."""
    import optuna

    study = recorded_study(config, "to tell finished trials")
    if study is None:
        return set()
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    trials = study.get_trials(deepcopy=False, states=states)
    return {str(t.user_attrs["ray_trial_id"]) for t in trials if "ray_trial_id" in t.user_attrs}


def prune_cut_trials(config: ExperimentConfig) -> int:
    """Record the trials the study still holds as RUNNING once the time budget has ended the search: PRUNED, or
    COMPLETE with their last value if they had reported ``budget.max_epochs`` (as the search summary has them).

    Tune ends a search's trials (running or paused at a promotion rung) without telling the searcher, so Optuna
    would show them running for ever. Each keeps its intermediate values; its epochs are the last one reported.
    A trial the database refuses is left as it is, with a warning: the summary still records it. Returns how many
    were recorded.
    """
    import optuna

    study = recorded_study(config, "to record the trials the budget cut")
    if study is None:
        return 0
    recorded = 0
    for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        epochs = max(frozen.intermediate_values, default=0)
        try:
            optuna.Trial(study, frozen._trial_id).set_user_attr("epochs", epochs)
            if epochs >= config.budget.max_epochs:
                study.tell(frozen.number, frozen.intermediate_values[epochs])
            else:
                study.tell(frozen.number, state=optuna.trial.TrialState.PRUNED)
            recorded += 1
        except Exception as exc:  # noqa: BLE001 - bookkeeping: a database that refuses must not lose the summary
            logger.warning("could not record trial %d of the Optuna study %r: %s", frozen.number, config.name, exc)
    return recorded


def recorded_study(config: ExperimentConfig, purpose: str) -> Any | None:
    """The experiment's Optuna study, or None when it has none (a fixed point, nothing recorded, unreachable)."""
    import optuna

    if not config.space.searched():  # a fixed point has no study
        return None
    if config.optuna.storage is None and not (experiment_dir(config) / OPTUNA_DB).is_file():
        return None  # nothing recorded (and opening the URL would create the file)
    try:
        return optuna.load_study(study_name=config.name, storage=optuna_storage_url(config))
    except Exception as exc:  # noqa: BLE001 - no such study, or an unreachable database: Tune's record alone then
        logger.warning("could not read the Optuna study %r %s: %s", config.name, purpose, exc)
        return None


def trial_state(failed: bool, epochs: int, max_epochs: int) -> str:
    """A finished trial's state in Optuna's terms: FAIL if it errored, COMPLETE at its full budget, else PRUNED."""
    if failed:
        return "FAIL"
    return "COMPLETE" if epochs >= max_epochs else "PRUNED"


def summarise(results: Any, config: ExperimentConfig, unfinished: set[str] | None = None) -> pd.DataFrame:
    """One row per trial: state in Optuna terms, hyperparameters, epochs, best internal-val kappa, checkpoint.

    Trials in ``unfinished`` (an interrupted search) are RUNNING, as in Optuna, rather than mistaken for pruned.
    """
    rows = []
    for result in results:
        rows.append(_summary_row(result, config, unfinished or set()))
    summary = pd.DataFrame(rows)
    if len(summary):
        summary = summary.sort_values("best_val_kappa", ascending=False, na_position="last").reset_index(drop=True)
    return summary


def _summary_row(result: Any, config: ExperimentConfig, unfinished: set[str]) -> dict:
    metrics = result.metrics or {}
    trial_id = metrics.get("trial_id") or Path(result.path).name.removeprefix(TRIAL_DIR_PREFIX)
    epochs = int(metrics.get(EPOCH, 0) or 0)
    history = result.metrics_dataframe
    best_kappa = float(history[METRIC].max()) if history is not None and METRIC in history else float("nan")
    best_auc = float(history[VAL_AUC].max()) if history is not None and VAL_AUC in history else float("nan")
    best = result.get_best_checkpoint(METRIC, MODE) if result.best_checkpoints else None
    if str(trial_id) in unfinished and result.error is None:
        state = "RUNNING"
    else:
        state = trial_state(result.error is not None, epochs, config.budget.max_epochs)
    row = {"trial_id": trial_id, "state": state, "epochs": epochs}
    row.update({"best_val_kappa": best_kappa, "best_val_auc": best_auc})
    row.update({name: (result.config or {}).get(name) for name in HYPERPARAMETERS})  # a trial never started has none
    if history is not None and METRIC in history and history[METRIC].notna().any():  # NaN kappa: worst
        best_row = history.loc[history[METRIC].idxmax()]
        row.update({k: best_row[k] for k in history.columns if k.startswith(f"{METRIC}/")})
        row["best_epoch"] = int(best_row.get(EPOCH, 0))
    row["time_s"] = float(metrics.get("time_total_s", 0.0) or 0.0)
    row["checkpoint"] = best.path if best is not None else _reported_checkpoint(history)
    row["trial_dir"] = result.path
    row["error"] = _one_line(result.error) if result.error is not None else None
    return row


def _reported_checkpoint(history: pd.DataFrame | None) -> str | None:
    """Best checkpoint of a data-parallel trial: its Train run reports checkpoint paths as a metric."""
    if history is None or "checkpoint_path" not in history or METRIC not in history:
        return None
    with_path = history.dropna(subset=["checkpoint_path", METRIC])
    return str(with_path.loc[with_path[METRIC].idxmax(), "checkpoint_path"]) if len(with_path) else None


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line[:300]
    return (lines[-1] if lines else type(error).__name__)[:300]


def format_summary(summary: pd.DataFrame, top: int = 10) -> str:
    """The top trials as a text table."""
    if summary.empty:
        return "(no trials)"
    columns = ["trial_id", "state", "epochs", "best_val_kappa", *HYPERPARAMETERS]
    columns += [c for c in summary.columns if c.startswith(f"{METRIC}/")]
    table = summary[columns].head(top).copy()
    table["lr"] = table["lr"].map(lambda v: f"{v:.2e}" if isinstance(v, float) else v)
    if "weight_decay" in table:
        table["weight_decay"] = table["weight_decay"].map(lambda v: f"{v:.1e}" if isinstance(v, float) else v)
    table.columns = [c.replace(f"{METRIC}/", "") for c in table.columns]
    return table.to_string(index=False, float_format=lambda v: f"{v:.3f}")


def read_search_summary(path: Path, missing_hint: str) -> pd.DataFrame:
    """A ``search_summary.csv`` as later stages read it: trial ids as strings, ``trial_id`` and ``state`` present.

    Raises:
        UserError: one line naming the file: missing (with ``missing_hint``), not UTF-8, not a CSV, or a column short.
    """
    if not path.is_file():
        raise UserError(f"{path}: not found; {missing_hint}")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (a spreadsheet saved it) is dropped
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start}); was it edited? rerun the search") from None
    try:
        summary = pd.read_csv(io.StringIO(text), dtype={"trial_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: not a readable search summary ({reason})") from None
    missing = [column for column in ("trial_id", "state") if column not in summary]
    if missing:
        raise UserError(f"{path}: no {missing[0]!r} column; not a search summary muratune wrote")
    return summary
