"""Read everything a report needs from an experiment folder, tolerating stages that have not run yet."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from muratune.config import read_yaml
from muratune.errors import UserError
from muratune.experiment_folder import experiment_config_file
from muratune.layout import (
    CAM_SCORE_JSON,
    CAMS_DIR,
    CAMS_JSON,
    DEFAULT_PREDICTOR,
    ENSEMBLE_DIR,
    ENSEMBLE_FILE,
    PROGRESS_CSV,
    REFIT_DIR,
    REFIT_SUMMARY,
    SUMMARY_CSV,
    TEST_STUDIES,
    TRIALS_TEST_DIR,
    trial_dir,
)
from muratune.schemas import DefaultChoice, EnsembleSpec, read_default_choice, read_ensemble_spec
from muratune.search.summary import read_search_summary

CAM_DIRS = (CAMS_DIR, "cam")  # "cam" is where muratune 0.1's README put them
MAX_CAM_IMAGES = 4


@dataclass
class Ensemble:
    """One ensemble strategy's spec and its test-split study predictions."""

    name: str
    spec: EnsembleSpec
    studies: pd.DataFrame


@dataclass
class Cams:
    """Class activation maps exported by the cam stage: the localisation score and a few overlays."""

    folder: Path
    score: dict[str, Any]
    images: list[Path]


@dataclass
class Experiment:
    """The parts of an experiment folder the report reads; missing stages are empty."""

    path: Path
    name: str
    config: dict[str, Any]
    summary: pd.DataFrame
    trials_test: dict[str, pd.DataFrame] = field(default_factory=dict)
    ensembles: list[Ensemble] = field(default_factory=list)
    histories: dict[str, pd.DataFrame] = field(default_factory=dict)
    cams: Cams | None = None
    refit_summary: pd.DataFrame | None = None
    default: DefaultChoice | None = None  # the default predictor `muratune refit` chose (ensemble/default.json)

    def resources(self) -> tuple[float, float]:
        """CPUs and accelerators held by one trial (all its workers)."""
        res = self.config.get("resources") or {}
        workers = float(res.get("workers_per_trial", 1) or 1)
        return float(res.get("cpus_per_trial", 1) or 0) * workers, float(res.get("gpus_per_trial", 0) or 0) * workers

    def trial_hours(self, trial_id: str) -> tuple[float, float]:
        """CPU hours and accelerator hours one trial (or refit fold model) used (wall time x resources held)."""
        rows = self.summary.loc[self.summary["trial_id"] == trial_id, "time_s"]
        if not len(rows) and self.refit_summary is not None:
            rows = self.refit_summary.loc[self.refit_summary["trial_id"] == trial_id, "time_s"]
        seconds = float(rows.iloc[0]) if len(rows) and not math.isnan(rows.iloc[0]) else 0.0
        cpus, gpus = self.resources()
        return seconds * cpus / 3600.0, seconds * gpus / 3600.0


def read_config(exp_dir: Path) -> dict[str, Any]:
    """The resolved config as plain YAML data (not re-validated, so old experiments still report)."""
    return read_yaml(experiment_config_file(exp_dir))


def read_summary(exp_dir: Path) -> pd.DataFrame:
    """``search_summary.csv`` (trial ids kept as strings)."""
    summary = read_search_summary(exp_dir / SUMMARY_CSV, "run `muratune search` first")
    if "time_s" not in summary:
        summary["time_s"] = math.nan
    return summary


def read_histories(exp_dir: Path, trial_ids: list[str]) -> dict[str, pd.DataFrame]:
    """Per-epoch results of each trial from Tune's ``progress.csv``."""
    histories = {}
    for trial_id in trial_ids:
        path = trial_dir(exp_dir, trial_id) / PROGRESS_CSV
        if path.is_file() and path.stat().st_size:
            try:
                histories[trial_id] = pd.read_csv(path)
            except (pd.errors.ParserError, pd.errors.EmptyDataError):
                continue
    return histories


def read_trials_test(exp_dir: Path) -> dict[str, pd.DataFrame]:
    """Each trial's test-split study predictions (``trials_test/<trial_id>.parquet``), if the ensemble stage ran."""
    folder = exp_dir / TRIALS_TEST_DIR
    if not folder.is_dir():
        return {}
    return {path.stem: pd.read_parquet(path) for path in sorted(folder.glob("*.parquet"))}


def read_ensembles(exp_dir: Path) -> list[Ensemble]:
    """Every ensemble strategy folder with both ``ensemble.json`` and test predictions."""
    folder = exp_dir / ENSEMBLE_DIR
    ensembles = []
    for sub in sorted(folder.iterdir()) if folder.is_dir() else []:
        spec_path, studies_path = sub / ENSEMBLE_FILE, sub / TEST_STUDIES
        if sub.name.startswith(".") or not (spec_path.is_file() and studies_path.is_file()):
            continue
        spec = read_ensemble_spec(spec_path)  # a tampered ensemble.json is one line naming the field, not a wrong table
        ensembles.append(Ensemble(spec.strategy or sub.name, spec, pd.read_parquet(studies_path)))
    return ensembles


def read_refit_summary(exp_dir: Path) -> pd.DataFrame | None:
    """``refit/refit_summary.csv`` (one row per fold model), if ``muratune refit`` ran."""
    path = exp_dir / REFIT_DIR / REFIT_SUMMARY
    if not path.is_file():
        return None
    summary = pd.read_csv(path, dtype={"trial_id": str, "configuration": str})
    return summary if "time_s" in summary else summary.assign(time_s=math.nan)


def read_default(exp_dir: Path) -> DefaultChoice | None:
    """``ensemble/default.json``, if ``muratune refit`` chose a default predictor."""
    path = exp_dir / ENSEMBLE_DIR / DEFAULT_PREDICTOR
    return read_default_choice(path) if path.is_file() else None


def read_cams(exp_dir: Path) -> Cams | None:
    """The first CAM export under ``cams/`` (a folder with ``score.json`` or ``cams.json``) and a few overlays."""
    for name in CAM_DIRS:
        root = exp_dir / name
        if not root.is_dir():
            continue
        folders = sorted({p.parent for marker in (CAM_SCORE_JSON, CAMS_JSON) for p in root.rglob(marker)})
        for folder in folders:
            score: Any = {}
            if (folder / CAM_SCORE_JSON).is_file():
                try:
                    score = json.loads((folder / CAM_SCORE_JSON).read_text(encoding="utf-8"))
                except (OSError, json.JSONDecodeError):
                    score = {}
            images = sorted(folder.rglob("*.png"))[:MAX_CAM_IMAGES]
            return Cams(folder, score if isinstance(score, dict) else {"score": score}, images)
    return None


def load_experiment(experiment: str | Path) -> Experiment:
    """Read an experiment folder: config, search summary, histories, and whatever later stages wrote."""
    exp_dir = Path(experiment).expanduser().resolve()
    if not exp_dir.is_dir():
        raise UserError(f"{exp_dir}: experiment folder not found")
    config = read_config(exp_dir)
    summary = read_summary(exp_dir)
    return Experiment(
        path=exp_dir,
        name=str(config.get("name") or exp_dir.name),
        config=config,
        summary=summary,
        trials_test=read_trials_test(exp_dir),
        ensembles=read_ensembles(exp_dir),
        histories=read_histories(exp_dir, list(summary["trial_id"])),
        cams=read_cams(exp_dir),
        refit_summary=read_refit_summary(exp_dir),
        default=read_default(exp_dir),
    )
