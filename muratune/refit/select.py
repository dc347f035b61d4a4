"""Pick the configurations to refit: the K best trials of a finished search (`muratune.ranking.rank_trials`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from muratune.config import BudgetConfig
from muratune.errors import UserError
from muratune.layout import SUMMARY_CSV, TRIAL_FILE, checkpoint_in_experiment
from muratune.ranking import rank_trials
from muratune.search.summary import read_search_summary
from muratune.trainables import checkpoint as ckpt


@dataclass
class Configuration:
    """One searched configuration to refit: its search trial, hyperparameters and internal-val scores.

    ``peak_epoch`` is the epoch of the search trial's best checkpoint (by internal-val kappa, as the search keeps
    it); ``epochs`` is how many epochs this refit trains its models (None in plans written before it was recorded:
    the plan's ``epochs``).
    """

    trial_id: str
    hparams: dict
    val_kappa: float
    val_auc: float
    checkpoint: str
    peak_epoch: int | None = None
    epochs: int | None = None

    def to_json(self) -> dict:
        """JSON-ready fields (NaN scores become None; unknown epochs are left out)."""
        out = {
            "trial_id": self.trial_id,
            "hparams": self.hparams,
            "val_kappa": None if math.isnan(self.val_kappa) else self.val_kappa,
            "val_auc": None if math.isnan(self.val_auc) else self.val_auc,
            "checkpoint": self.checkpoint,
        }
        out.update({k: v for k, v in (("peak_epoch", self.peak_epoch), ("epochs", self.epochs)) if v is not None})
        return out

    @classmethod
    def from_json(cls, data: dict) -> Configuration:
        """Inverse of `to_json`."""
        nan = float("nan")
        kappa, auc = data.get("val_kappa"), data.get("val_auc")
        return cls(
            str(data["trial_id"]),
            dict(data["hparams"]),
            nan if kappa is None else float(kappa),
            nan if auc is None else float(auc),
            str(data.get("checkpoint", "")),
            None if data.get("peak_epoch") is None else int(data["peak_epoch"]),
            None if data.get("epochs") is None else int(data["epochs"]),
        )


def read_finished_summary(exp_dir: Path, budget: BudgetConfig | None = None) -> pd.DataFrame:
    """``search_summary.csv`` of a search that has finished: refuses a missing summary or RUNNING trials.

    With the search's ``budget`` it also refuses a search stopped between trials: fewer trials than
    ``budget.num_samples`` when no time budget could have ended it early.
    """
    path = exp_dir / SUMMARY_CSV
    summary = read_search_summary(path, f"the search has not finished (or {exp_dir} is not an experiment)")
    running = summary.loc[summary["state"] == "RUNNING", "trial_id"].tolist()
    if running:
        raise UserError(
            f"{path}: {len(running)} trial(s) still RUNNING ({', '.join(running[:5])}); finish the search with "
            "`muratune search --resume` before refitting"
        )
    if budget is not None and budget.time_budget_s is None and len(summary) < budget.num_samples:
        raise UserError(
            f"{path}: the search stopped after {len(summary)} of its {budget.num_samples} trials "
            "(budget.num_samples); finish it with `muratune search --resume` before refitting"
        )
    return summary


def trial_checkpoint(exp_dir: Path, row: pd.Series) -> Path:
    """The trial's best checkpoint folder, also after the experiment folder was moved; refuses a missing one."""
    recorded = row.get("checkpoint")
    if not isinstance(recorded, str) or not recorded:
        raise UserError(f"{exp_dir / SUMMARY_CSV}: trial {row['trial_id']} has no checkpoint to refit from")
    path = checkpoint_in_experiment(exp_dir, recorded)
    if path is None or not (path / TRIAL_FILE).is_file():
        raise UserError(f"{recorded}: checkpoint of trial {row['trial_id']} not found in {exp_dir} (trials missing?)")
    return path


def peak_epoch(trial: dict, row: pd.Series) -> int | None:
    """The epoch a search trial peaked at: its best checkpoint's epoch (``trial.json``), else the summary's
    ``best_epoch``; None when neither is recorded."""
    epoch = trial.get("epoch")
    if isinstance(epoch, int) and epoch >= 1:
        return epoch
    best = row.get("best_epoch")
    return int(best) if best is not None and not pd.isna(best) and int(best) >= 1 else None


def select_configurations(exp_dir: Path, top: int, budget: BudgetConfig | None = None) -> list[Configuration]:
    """The ``top`` best configurations of a finished search, with hyperparameters read from their checkpoints.

    Raises:
        UserError: the search is unfinished, ``top`` is below 1, or a selected trial's checkpoint is missing.
    """
    if top < 1:
        raise UserError(f"--top {top}: must be at least 1")
    ranked = rank_trials(read_finished_summary(exp_dir, budget)).dropna(subset=["best_val_kappa"])
    if ranked.empty:
        raise UserError(f"{exp_dir / SUMMARY_CSV}: no trial with an internal-val kappa to refit (all failed?)")
    chosen = []
    for _, row in ranked.head(top).iterrows():
        path = trial_checkpoint(exp_dir, row)
        trial = ckpt.read_json(path / TRIAL_FILE)
        hparams = trial.get("hyperparameters") if isinstance(trial, dict) else None
        if not isinstance(hparams, dict):
            raise UserError(f"{path / TRIAL_FILE}: no hyperparameters recorded; not a muratune checkpoint")
        kappa, auc = float(row["best_val_kappa"]), float(row["best_val_auc"])
        chosen.append(Configuration(str(row["trial_id"]), hparams, kappa, auc, str(path), peak_epoch(trial, row)))
    return chosen
