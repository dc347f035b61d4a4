"""The refit's summary: one row per fold model (state, epochs, out-of-fold scores, checkpoint), and what is left."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from muratune.constants import METRIC, VAL_AUC
from muratune.fileio import write_text
from muratune.layout import REFIT_SUMMARY, TRIAL_FILE
from muratune.refit.plan import ENTRY, RefitPlan, entry_id, member_id
from muratune.search.summary import _one_line
from muratune.trainables import checkpoint as ckpt


def checkpoint_epoch(path: str | None) -> int:
    """The epoch a fold model's checkpoint holds (0 when there is none)."""
    trial_file = Path(path) / TRIAL_FILE if path else None
    if trial_file is None or not trial_file.is_file():
        return 0
    return int(ckpt.read_json(trial_file).get("epoch", 0) or 0)


def _state(result: Any, checkpoint_epochs: int, epochs: int) -> str:
    """FAIL, COMPLETE (its checkpoint holds the last epoch) or RUNNING.

    The checkpoint decides rather than Tune's ``done`` flag, which a trial interrupted right after its last epoch
    lacks although its fold model is finished.
    """
    if result.error is not None:
        return "FAIL"
    return "COMPLETE" if checkpoint_epochs >= epochs else "RUNNING"


def _checkpoint_path(result: Any) -> str | None:
    """The fold model: the trial's latest checkpoint (data-parallel trials report its path as a metric)."""
    if result.checkpoint is not None:
        return str(result.checkpoint.path)
    history = result.metrics_dataframe
    if history is not None and "checkpoint_path" in history and history["checkpoint_path"].notna().any():
        return str(history["checkpoint_path"].dropna().iloc[-1])
    return None


def _entry(result: Any) -> dict:
    """The (configuration, fold) entry a result trained: from its config, or from the trial's ``params.json``
    (a restored trial that failed before it reported anything has no config in its result)."""
    entry = (result.config or {}).get(ENTRY)
    params = Path(result.path) / "params.json" if result.path else None
    if not entry and params is not None and params.is_file():
        entry = ckpt.read_json(params).get(ENTRY)
    return entry or {}


def summarise_refit(results: Any, epochs: int) -> pd.DataFrame:
    """One row per entry: ``trial_id`` (the fold or full model), configuration, fold (-1: a full model), state,
    metrics.

    ``epochs`` is the epochs of a finished model, unless its entry has its own (``--epochs peak``); ``epochs`` in
    the table is what its checkpoint holds.
    """
    rows = []
    for result in results:
        entry = _entry(result)
        metrics = result.metrics or {}
        checkpoint = _checkpoint_path(result)
        trained = checkpoint_epoch(checkpoint)
        rows.append(
            {
                "trial_id": entry_id(entry),
                "configuration": str(entry.get("trial_id")),
                "fold": int(entry.get("fold", -1)),
                "state": _state(result, trained, int(entry.get("epochs") or epochs)),
                "epochs": trained,
                "oof_kappa": metrics.get(METRIC),
                "oof_auc": metrics.get(VAL_AUC),
                "time_s": float(metrics.get("time_total_s", 0.0) or 0.0),
                "checkpoint": checkpoint,
                "trial_dir": result.path,
                "error": _one_line(result.error) if result.error is not None else None,
            }
        )
    summary = pd.DataFrame(rows)
    return summary.sort_values(["configuration", "fold"]).reset_index(drop=True) if len(summary) else summary


def fold_outcome(plan: RefitPlan, summary: pd.DataFrame) -> tuple[list[str], dict[str, list[str]]]:
    """The plan's fold models that have not finished (interrupted, or never started), and the failed ones' errors
    by configuration (``trial_<id>_fold<k>: <error>``)."""
    states = dict(zip(summary["trial_id"], summary["state"], strict=True)) if len(summary) else {}
    errors = dict(zip(summary["trial_id"], summary["error"], strict=True)) if len(summary) else {}
    unfinished: list[str] = []
    failed: dict[str, list[str]] = {}
    for entry in plan.entries():
        fold_model = member_id(entry["trial_id"], entry["fold"])
        state = states.get(fold_model)
        if state == "FAIL":
            failed.setdefault(entry["trial_id"], []).append(f"trial_{fold_model}: {errors.get(fold_model)}")
        elif state != "COMPLETE":
            unfinished.append(fold_model)
    return unfinished, failed


def stopped_message(exp_dir: Path, unfinished: list[str], failed: dict[str, list[str]]) -> str:
    """Why no ``ensemble/cv`` was built yet, and the commands that go on."""
    lines = [f"fold model {error}" for errors in failed.values() for error in errors]
    command = f"muratune refit {exp_dir} --resume"
    if unfinished:
        lines.append(f"refit stopped with {len(unfinished)} fold model(s) unfinished; `{command}` goes on")
    if failed:
        count = sum(len(errors) for errors in failed.values())
        lines.append(
            f"refit stopped: {count} fold model(s) failed; `{command}` retries them, `{command} --drop-failed` "
            f"builds ensemble/cv without configuration(s) {', '.join(failed)}"
        )
    return "\n".join(lines)


def record_refit_summary(
    refit: Path, results: Any, epochs: int, echo: Callable[[str], None], name: str = REFIT_SUMMARY
) -> pd.DataFrame:
    """Write ``refit_summary.csv`` (or ``name``), drop the optimizer state of finished models (never trained
    again), and show the table."""
    summary = summarise_refit(results, epochs)
    write_text(refit / name, summary.to_csv(index=False))
    if len(summary):
        ckpt.release_optimizer_state(summary.loc[summary["state"] == "COMPLETE", "trial_dir"].dropna())
    shown = summary.drop(columns=["trial_dir", "checkpoint", "error"], errors="ignore")
    echo(shown.to_string(index=False, float_format="{:.3f}".format))
    return summary
