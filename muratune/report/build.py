"""Building a report: read the experiment, score the leaderboard, draw the figures (nothing is written here)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from muratune import __version__
from muratune.constants import PRED
from muratune.errors import UserError
from muratune.fileio import json_safe
from muratune.report import plots
from muratune.report.bootstrap import DEFAULT_LEVEL, DEFAULT_REPLICATES
from muratune.report.calibration import calibration_table, uncalibrated
from muratune.report.experiment import Experiment, load_experiment
from muratune.report.importance import load_study, param_importances, trial_numbers
from muratune.report.leaderboard import (
    DEFAULT_TOP,
    REFERENCE,
    TRIAL,
    Entry,
    best_entry,
    build_entries,
    leaderboard_frame,
)


@dataclass
class Report:
    """Everything rendered into the report files."""

    experiment: Experiment
    entries: list[Entry]
    leaderboard: pd.DataFrame
    best: Entry | None
    trials: pd.DataFrame
    figures: dict[str, bytes]
    importances: dict[str, float]
    notes: list[str]
    replicates: int
    seed: int
    level: float
    calibration: pd.DataFrame = field(default_factory=pd.DataFrame)  # see `calibration_table`
    generated: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


def trials_table(exp: Experiment, numbers: dict[str, int]) -> pd.DataFrame:
    """One row per trial: Optuna number (else start order), state, best internal-val kappa, end time in minutes."""
    rows = []
    for row in exp.summary.to_dict("records"):
        trial_id = str(row["trial_id"])
        history = exp.histories.get(trial_id)
        start = end = math.nan
        if history is not None and "timestamp" in history and len(history):
            first_epoch = float(history.get("time_this_iter_s", pd.Series([0.0])).iloc[0])
            start, end = float(history["timestamp"].iloc[0]) - first_epoch, float(history["timestamp"].iloc[-1])
        rows.append(
            {
                "trial_id": trial_id,
                "number": numbers.get(trial_id, math.nan),
                "state": row.get("state"),
                "best_val_kappa": row.get("best_val_kappa"),
                "epochs": row.get("epochs"),
                "start": start,
                "end": end,
            }
        )
    table = pd.DataFrame(rows, columns=["trial_id", "number", "state", "best_val_kappa", "epochs", "start", "end"])
    if table["number"].isna().all():
        table["number"] = table["start"].rank(method="first") - 1
    table["end_min"] = (table["end"] - table["start"].min()) / 60.0
    return table


def _notes(exp: Experiment, entries: list[Entry], importance_note: str) -> list[str]:
    notes = [
        "The test split is the official MURA valid split (public), held out from the search: models, ensembles and "
        "thresholds were chosen on the internal validation split only, and rows are ordered by internal-val kappa."
    ]
    if exp.default is not None:
        choice = exp.default
        notes.append(
            f"Default predictor: {choice.predictor} ({choice.path}), chosen by muratune refit: {choice.reason}."
        )
    if not exp.trials_test:
        notes.append(
            "Per-trial test predictions do not exist yet (run `muratune ensemble` on this experiment): trial rows "
            "show the internal-validation kappa the search optimised, not test metrics."
        )
    if not exp.ensembles:
        notes.append("No ensembles yet: run `muratune ensemble` on this experiment to add ensemble rows.")
    missed = sum(int(e.studies[PRED].isna().sum()) for e in entries if e.studies is not None and PRED in e.studies)
    if missed:
        notes.append(f"{missed} study prediction(s) had no readable view; they are scored as misses.")
    if importance_note:
        notes.append(importance_note)
    if exp.cams is None:
        notes.append("No class activation maps yet (the cam stage writes them under cams/).")
    return notes


def _figures(
    exp: Experiment,
    entries: list[Entry],
    best: Entry | None,
    trials: pd.DataFrame,
    importances: dict[str, float],
    level: float,
) -> dict[str, bytes]:
    figures: dict[str, bytes | None] = {}
    references = [e for e in entries if e.kind == REFERENCE]
    if best is not None:
        figures["kappa"] = plots.kappa_plot(best, references, level)
        best_trial = next((e for e in entries if e.kind == TRIAL and e.studies is not None and e is not best), None)
        figures["roc"] = plots.roc_plot([best] + ([best_trial] if best_trial is not None else []))
        figures["confusion"] = plots.confusion_plot(best)
    ensemble = next((e for e in exp.ensembles if best is not None and e.name == best.name), None)
    ensemble = ensemble or next(iter(exp.ensembles), None)
    if ensemble is not None:
        figures["reliability"] = plots.reliability_plot(ensemble.name, uncalibrated(ensemble.studies), ensemble.studies)
    figures["progress"] = plots.progress_plot(trials)
    budget = exp.config.get("budget") or {}
    rungs = []
    if budget.get("scheduler", "asha") in ("asha", "asha-promotion"):  # the same rungs, stopping or pausing
        rungs = plots.asha_rungs(
            int(budget.get("grace_period", 1)),
            float(budget.get("reduction_factor", 3)),
            int(budget.get("max_epochs", 1)),
        )
    states = dict(zip(exp.summary["trial_id"].astype(str), exp.summary["state"].astype(str), strict=True))
    figures["learning_curves"] = plots.learning_curves_plot(exp.histories, states, rungs)
    figures["importance"] = plots.importance_plot(importances)
    return {key: png for key, png in figures.items() if png is not None}


def build_report(
    experiment: str | os.PathLike,
    top: int = DEFAULT_TOP,
    replicates: int = DEFAULT_REPLICATES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> Report:
    """Read an experiment and compute everything the report shows (nothing is written).

    Args:
        experiment: the experiment folder.
        top: how many trials (best internal-val kappa first) get a leaderboard row.
        replicates: bootstrap replicates per CI.
        seed: bootstrap seed (the same seed for every row, so rows are comparable and reruns identical).
        level: CI confidence level.
    """
    if replicates < 1:
        raise UserError(f"--replicates {replicates}: must be at least 1")
    if top < 0:
        raise UserError(f"--top {top}: must not be negative")
    exp = load_experiment(Path(experiment))
    entries = build_entries(exp, top=top, replicates=replicates, seed=seed, level=level)
    best = best_entry(entries)
    study, study_note = load_study(exp)
    importances, importance_note = param_importances(study, seed=seed)
    trials = trials_table(exp, trial_numbers(study))
    notes = _notes(exp, entries, " ".join(n for n in (study_note, importance_note) if n))
    figures = _figures(exp, entries, best, trials, importances, level)
    return Report(
        exp,
        entries,
        leaderboard_frame(entries),
        best,
        trials,
        figures,
        importances,
        notes,
        replicates,
        seed,
        level,
        calibration_table(exp.ensembles),
    )


def metrics_document(report: Report) -> dict[str, Any]:
    """``metrics.json``: settings, notes, and every entry's per-body-part metrics with CIs."""
    exp = report.experiment
    entries = []
    for entry in report.entries:
        item: dict[str, Any] = {
            "name": entry.name,
            "kind": entry.kind,
            "split": entry.split,
            "val_kappa": json_safe(entry.val_kappa),
            "oof_kappa": json_safe(entry.oof_kappa),
            "cpu_hours": json_safe(entry.cpu_hours),
            "gpu_hours": json_safe(entry.gpu_hours),
            "details": json_safe(entry.details),
        }
        if entry.score is not None:
            item["metrics"] = json_safe(entry.score.to_dict(orient="index"))
        else:
            item["kappa"] = json_safe(entry.kappas())
        entries.append(item)
    return {
        "experiment": exp.name,
        "experiment_dir": str(exp.path),
        "generated": report.generated,
        "muratune_version": __version__,
        "bootstrap": {
            "replicates": report.replicates,
            "seed": report.seed,
            "level": report.level,
            "method": "stratified by body part, percentile interval",
        },
        "best": report.best.name if report.best is not None else None,
        "default": exp.default.model_dump(mode="json") if exp.default is not None else None,
        "notes": report.notes,
        "parameter_importance": report.importances,
        "calibration": json_safe(report.calibration.to_dict(orient="records")),
        "cams": json_safe(exp.cams.score) if exp.cams is not None else None,
        "entries": entries,
    }
