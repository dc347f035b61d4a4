"""A refit's plan (``refit.json``): which configurations, how many folds and epochs, made new or read to resume."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from muratune.config import ExperimentConfig
from muratune.errors import UserError
from muratune.fileio import refuse_foreign
from muratune.layout import REFIT_DIR, REFIT_KIND, REFIT_PLAN
from muratune.refit.select import Configuration, select_configurations
from muratune.schemas import read_refit_plan

ENTRY = "entry"  # the Tune parameter holding one (configuration, fold)
DEFAULT_TOP, DEFAULT_FOLDS = 3, 5
PEAK = "peak"  # --epochs peak: each configuration's models train for the epoch its search trial peaked at
FIXED = "fixed"
EpochsOption = int | str | None  # an integer, PEAK, or None (the config's budget.max_epochs)


@dataclass
class RefitPlan:
    """What a refit trains: each configuration on each of ``folds`` folds, for its epochs.

    With ``epochs_rule`` ``fixed`` every configuration trains ``epochs`` epochs; with ``peak`` each trains its own
    ``Configuration.epochs`` (its search trial's peak epoch), and ``epochs`` is the most of them.
    """

    configurations: list[Configuration]
    folds: int
    epochs: int
    split_seed: int
    top: int | None = None  # the --top asked for; a search with fewer rankable trials gives fewer configurations
    epochs_rule: str = FIXED

    def epochs_of(self, trial_id: str) -> int:
        """The epochs a configuration's fold (and full) models train."""
        for c in self.configurations:
            if c.trial_id == trial_id and c.epochs is not None:
                return c.epochs
        return self.epochs

    @property
    def requested_top(self) -> int:
        """The ``--top`` this refit was started with (plans written before it was recorded: its configurations)."""
        return len(self.configurations) if self.top is None else self.top

    def entries(self) -> list[dict]:
        """One Tune parameter entry per (configuration, fold), configuration-major."""
        return [
            {
                "trial_id": c.trial_id,
                "fold": k,
                "folds": self.folds,
                "hparams": c.hparams,
                "epochs": self.epochs_of(c.trial_id),
            }
            for c in self.configurations
            for k in range(self.folds)
        ]

    def to_json(self) -> dict:
        """The ``refit.json`` content."""
        return {
            "top": self.requested_top,
            "folds": self.folds,
            "epochs": self.epochs,
            "epochs_rule": self.epochs_rule,
            "split_seed": self.split_seed,
            "configurations": [c.to_json() for c in self.configurations],
        }

    @classmethod
    def read(cls, path: Path) -> RefitPlan:
        """Read ``refit.json``, checked by its schema (one line naming the file and the field otherwise)."""
        record = read_refit_plan(path)
        configurations = [Configuration.from_json(c.model_dump()) for c in record.configurations]
        return cls(configurations, record.folds, record.epochs, record.split_seed, record.top, record.epochs_rule)


def member_id(trial_id: str, fold: int) -> str:
    """Id of a fold model: ``<search trial>_fold<k>`` (its Tune trial and ensemble member are ``trial_<id>``)."""
    return f"{trial_id}_fold{fold}"


def full_id(trial_id: str) -> str:
    """Id of a full model (``--full``): ``<search trial>_full`` (its Tune trial and ensemble member are
    ``trial_<id>``)."""
    return f"{trial_id}_full"


def entry_id(entry: dict) -> str:
    """Id of the model a Tune entry trains: a fold model, or a full model."""
    return (
        full_id(str(entry.get("trial_id")))
        if entry.get("full")
        else member_id(str(entry.get("trial_id")), int(entry.get("fold", -1)))
    )


def refit_dir(exp_dir: Path) -> Path:
    """The refit folder of an experiment."""
    return exp_dir / REFIT_DIR


def parse_epochs(value: str | int | None) -> EpochsOption:
    """``--epochs``: a positive integer, ``peak``, or None; anything else is refused with one line."""
    if value is None or value == PEAK:
        return value
    try:
        epochs = int(value)
    except (TypeError, ValueError):
        raise UserError(f"--epochs {value}: expected a positive integer or {PEAK!r}") from None
    if epochs < 1:
        raise UserError(f"--epochs {value}: must be at least 1")
    return epochs


def new_plan(exp_dir: Path, config: ExperimentConfig, top: int | None, folds: int | None, epochs: EpochsOption):
    """Select the configurations and fix the folds and epochs of a new refit.

    ``epochs`` ``peak`` gives each configuration the epoch its search trial peaked at (at least 1; the budget's
    ``max_epochs`` where the trial recorded none).
    """
    folds = DEFAULT_FOLDS if folds is None else folds
    epochs = parse_epochs(config.budget.max_epochs if epochs is None else epochs)
    if folds < 2:
        raise UserError(f"--folds {folds}: must be at least 2")
    top = DEFAULT_TOP if top is None else top
    configurations = select_configurations(exp_dir, top, config.budget)
    if epochs == PEAK:
        for c in configurations:
            c.epochs = max(1, c.peak_epoch or config.budget.max_epochs)
        most = max(c.epochs or 1 for c in configurations)
        return RefitPlan(configurations, folds, most, config.data.split_seed, top, PEAK)
    assert isinstance(epochs, int)
    for c in configurations:
        c.epochs = epochs
    return RefitPlan(configurations, folds, epochs, config.data.split_seed, top)


def resumed_plan(exp_dir: Path, top: int | None, folds: int | None, epochs: EpochsOption) -> RefitPlan:
    """The plan of the refit to resume; options that contradict it are refused."""
    path = refit_dir(exp_dir) / REFIT_PLAN
    if not path.is_file():
        raise UserError(f"{path}: not found; no refit to resume here (run it without --resume)")
    plan = RefitPlan.read(path)
    given: dict[str, tuple[EpochsOption, int | str]] = {
        "--top": (top, plan.requested_top),
        "--folds": (folds, plan.folds),
    }
    given["--epochs"] = (epochs, PEAK if plan.epochs_rule == PEAK else plan.epochs)
    for option, (value, planned) in given.items():
        if value is not None and str(value) != str(planned):
            raise UserError(f"{option} {value}: the refit being resumed was started with {option} {planned}")
    return plan


def make_plan(exp_dir: Path, config: ExperimentConfig, top, folds, epochs, resume: bool, overwrite: bool) -> RefitPlan:
    """The resumed refit's plan, or a new one (refusing to replace an existing refit without ``overwrite``)."""
    if resume:
        return resumed_plan(exp_dir, top, folds, epochs)
    refuse_foreign(refit_dir(exp_dir), REFIT_KIND)
    if (refit_dir(exp_dir) / REFIT_PLAN).exists() and not overwrite:
        raise UserError(f"{refit_dir(exp_dir)}: a refit already exists; pass --resume to continue it or --overwrite")
    return new_plan(exp_dir, config, top, folds, epochs)


def check_folds(config: ExperimentConfig, plan: RefitPlan) -> None:
    """Refuse folds the dataset cannot provide, before Ray starts.

    More folds than train patients (or than the largest body part/label group) are refused, and so is a fold that
    holds no train study of the experiment's body parts (``data.body_parts``): its fold model would have nothing
    to predict out of fold.
    """
    from muratune.constants import BODY_PART, PATIENT_ID, SPLIT, SPLIT_TRAIN
    from muratune.data.index import load_index
    from muratune.data.split import FOLD, patient_folds

    frame = patient_folds(load_index(config.data.root), plan.folds, plan.split_seed)  # type: ignore[arg-type]
    parts = config.data.body_parts
    if not parts:
        return
    train = frame[(frame[SPLIT] == SPLIT_TRAIN) & frame[BODY_PART].isin(parts)]
    empty = sorted(set(range(plan.folds)) - set(train[FOLD].tolist()))
    if empty:
        raise UserError(
            f"--folds {plan.folds}: fold(s) {', '.join(map(str, empty))} hold no train study of data.body_parts "
            f"({', '.join(parts)}; {train[PATIENT_ID].nunique()} train patients); use fewer folds"
        )
