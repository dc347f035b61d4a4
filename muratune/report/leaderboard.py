"""The leaderboard: ensembles and top trials scored on the test split, beside published reference rows."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import pandas as pd

from muratune.config import HYPERPARAMETERS
from muratune.constants import BODY_PARTS, short_part
from muratune.ranking import rank_trials
from muratune.report.bootstrap import DEFAULT_LEVEL, DEFAULT_REPLICATES
from muratune.report.experiment import Experiment
from muratune.report.scoring import OVERALL, score_studies

PARTS = tuple(short_part(p) for p in BODY_PARTS)
COLUMNS = (*PARTS, OVERALL)
DEFAULT_TOP = 10
ENSEMBLE, TRIAL, REFERENCE = "ensemble", "trial", "reference"
TEST_SPLIT = "test"
VAL_SPLIT = "internal val only"
PUBLISHED_SPLIT = "hidden MURA test (published)"
REFERENCE_FILE = "mura_published.csv"
REFERENCE_NAMES = {
    "radiologist_1": "Radiologist 1",
    "radiologist_2": "Radiologist 2",
    "radiologist_3": "Radiologist 3",
    "stanford_baseline_densenet169_ensemble5": "MURA baseline (DenseNet-169, 5-model ensemble)",
    "leaderboard_1_ensemble_2018_11": "MURA leaderboard #1 (ensemble, Nov 2018)",
}


@dataclass
class Entry:
    """One leaderboard row: a trial, an ensemble or a published reference."""

    name: str
    kind: str
    split: str
    score: pd.DataFrame | None = None
    kappa: dict[str, float] = field(default_factory=dict)
    val_kappa: float = math.nan
    oof_kappa: float = math.nan  # a cv ensemble's out-of-fold kappa (what it was selected on)
    details: dict[str, Any] = field(default_factory=dict)
    cpu_hours: float = math.nan
    gpu_hours: float = math.nan
    studies: pd.DataFrame | None = None

    def kappas(self) -> dict[str, float]:
        """Kappa per column (body part short names and ``overall``); NaN where absent."""
        if self.score is not None:
            return {c: float(self.score.loc[c, "kappa"]) if c in self.score.index else math.nan for c in COLUMNS}
        return {c: self.kappa.get(c, math.nan) for c in COLUMNS}


def reference_table() -> pd.DataFrame:
    """The published kappas on the hidden MURA test set, shipped with the package."""
    with resources.files("muratune.resources").joinpath(REFERENCE_FILE).open(encoding="utf-8") as handle:
        return pd.read_csv(handle, comment="#")


def reference_entries() -> list[Entry]:
    """Reference rows: radiologists, the MURA baseline and the top leaderboard entry (hidden test set)."""
    entries = []
    for row in reference_table().to_dict("records"):
        name = REFERENCE_NAMES.get(row["source"], str(row["source"]))
        entries.append(Entry(name, REFERENCE, PUBLISHED_SPLIT, kappa={c: float(row[c]) for c in COLUMNS}))
    return entries


def _ensemble_entries(exp: Experiment, replicates: int, seed: int, level: float) -> list[Entry]:
    entries = []
    for ens in exp.ensembles:
        members = [m.trial_id if m.trial_id is not None else m.name for m in ens.spec.members]
        hours = [exp.trial_hours(t) for t in members]
        details = {
            "members": ", ".join(members),
            "thresholds": "tuned per body part" if ens.spec.tune_thresholds else "0.5",
            "tta": ens.spec.tta,
        }
        if ens.spec.folds:  # a cv ensemble: name its configurations, not every fold model
            configurations = ", ".join(ens.spec.configurations)
            details["members"] = f"{configurations} ({ens.spec.folds} fold models each, out-of-fold selection)"
        entries.append(
            Entry(
                name=ens.name,
                kind=ENSEMBLE,
                split=TEST_SPLIT,
                score=score_studies(ens.studies, replicates, seed, level),
                val_kappa=_number(ens.spec.val_score.get("val_kappa")),
                oof_kappa=_number(ens.spec.oof_score.get("oof_kappa")),
                details=details,
                cpu_hours=sum(h[0] for h in hours),
                gpu_hours=sum(h[1] for h in hours),
                studies=ens.studies,
            )
        )
    return sorted(entries, key=lambda e: -_sortable(e.val_kappa))


def _trial_entries(exp: Experiment, top: int, replicates: int, seed: int, level: float) -> list[Entry]:
    summary = rank_trials(exp.summary).head(top)
    entries = []
    for row in summary.to_dict("records"):
        trial_id = str(row["trial_id"])
        studies = exp.trials_test.get(trial_id)
        details = {name: row.get(name) for name in HYPERPARAMETERS if name in row}
        details.update({"state": row.get("state"), "epochs": row.get("epochs"), "best_epoch": row.get("best_epoch")})
        cpu, gpu = exp.trial_hours(trial_id)
        entries.append(
            Entry(
                name=f"trial {trial_id}",
                kind=TRIAL,
                split=TEST_SPLIT if studies is not None else VAL_SPLIT,
                score=score_studies(studies, replicates, seed, level) if studies is not None else None,
                val_kappa=float(row.get("best_val_kappa", math.nan)),
                details=details,
                cpu_hours=cpu,
                gpu_hours=gpu,
                studies=studies,
            )
        )
    return entries


def _sortable(value: float) -> float:
    return -math.inf if value is None or math.isnan(value) else value


def build_entries(
    exp: Experiment,
    top: int = DEFAULT_TOP,
    replicates: int = DEFAULT_REPLICATES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> list[Entry]:
    """Ensembles, then the ``top`` trials (both ordered by internal-val kappa, never by test), then references."""
    ensembles = _ensemble_entries(exp, replicates, seed, level)
    trials = _trial_entries(exp, top, replicates, seed, level)
    return [*ensembles, *trials, *reference_entries()]


def best_entry(entries: list[Entry]) -> Entry | None:
    """The entry chosen on internal val: the best-val ensemble, else the best-val trial with test predictions."""
    for kind in (ENSEMBLE, TRIAL):
        scored = [e for e in entries if e.kind == kind and e.score is not None]
        if scored:
            return max(scored, key=lambda e: _sortable(e.val_kappa))
    return None


def leaderboard_frame(entries: list[Entry]) -> pd.DataFrame:
    """One row per entry: kappa and CI per body part and overall, other metrics, val (or OOF) kappa, cost, details."""
    rows = []
    for entry in entries:
        row: dict[str, Any] = {"name": entry.name, "kind": entry.kind, "split": entry.split}
        for column, value in entry.kappas().items():
            row[f"kappa_{column}"] = value
            score = entry.score
            low = high = math.nan
            if score is not None and column in score.index:
                low, high = float(score.loc[column, "kappa_low"]), float(score.loc[column, "kappa_high"])
            row[f"kappa_{column}_low"], row[f"kappa_{column}_high"] = low, high
        for metric in ("auc", "sensitivity", "specificity", "accuracy", "n"):
            score = entry.score
            row[metric] = float(score.loc[OVERALL, metric]) if score is not None else math.nan
        row["val_kappa"] = entry.val_kappa
        row["oof_kappa"] = entry.oof_kappa
        row["cpu_hours"] = entry.cpu_hours
        row["gpu_hours"] = entry.gpu_hours
        row.update(entry.details)
        rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.rename(columns={"n": "test_studies"})


def _number(value: object) -> float:
    """A JSON number as a float; ``null`` (an undefined metric) and a missing value as NaN."""
    return math.nan if value is None else float(value)  # type: ignore[arg-type]
