"""A refit's plan (``refit/refit.json``): which configurations, how many folds and epochs; the fold models' ids."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from muratune.errors import UserError
from muratune.layout import REFIT_DIR
from muratune.refit.select import Configuration
from muratune.trainables import checkpoint as ckpt

ENTRY = "entry"  # the Tune parameter holding one (configuration, fold)


@dataclass
class RefitPlan:
    """What a refit trains: each configuration on each of ``folds`` folds, for ``epochs`` epochs."""

    configurations: list[Configuration]
    folds: int
    epochs: int
    split_seed: int

    def entries(self) -> list[dict]:
        """One Tune parameter entry per (configuration, fold), configuration-major."""
        return [
            {"trial_id": c.trial_id, "fold": k, "folds": self.folds, "hparams": c.hparams}
            for c in self.configurations
            for k in range(self.folds)
        ]

    def to_json(self) -> dict:
        """The ``refit.json`` content."""
        return {
            "folds": self.folds,
            "epochs": self.epochs,
            "split_seed": self.split_seed,
            "configurations": [c.to_json() for c in self.configurations],
        }

    @classmethod
    def read(cls, path: Path) -> RefitPlan:
        """Read ``refit.json``."""
        data = ckpt.read_json(path)
        try:
            configurations = [Configuration.from_json(c) for c in data["configurations"]]
            return cls(configurations, int(data["folds"]), int(data["epochs"]), int(data["split_seed"]))
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path}: not a muratune refit plan") from None


def member_id(trial_id: str, fold: int) -> str:
    """Id of a fold model: ``<search trial>_fold<k>`` (its Tune trial and ensemble member are ``trial_<id>``)."""
    return f"{trial_id}_fold{fold}"


def refit_dir(exp_dir: Path) -> Path:
    """The refit folder of an experiment."""
    return exp_dir / REFIT_DIR
