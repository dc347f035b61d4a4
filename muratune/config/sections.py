"""The experiment config: data, model, training, space, budget, resources, searcher, failures, checkpoints, tracking."""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from muratune.body_parts import normalise_body_part
from muratune.config.base import _Strict
from muratune.config.databases import check_sqlite_schema
from muratune.config.space import SpaceConfig

# Metrics ASHA can rank trials by at its rungs, with their direction.
RUNG_METRICS: dict[str, str] = {"val_auc": "max", "val_kappa": "max", "val_loss": "min"}
# An experiment name is a folder, an Optuna study and an MLflow experiment name: a short slug.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# Start-up trials per worker under stopping-type ASHA, where most stop at the first rung (`OptunaConfig`).
STOPPING_STARTUP_PER_WORKER = 5


class DataConfig(_Strict):
    """Where the data is and how images are prepared."""

    root: str | None = None
    image_size: Annotated[int, Field(ge=16, le=2048)] = 224
    resize_mode: Literal["pad", "stretch"] = "pad"
    body_parts: list[str] | None = None
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1
    split_seed: int = 0
    # Cross-validation (set by `muratune refit`): train on the other folds of the official train split, validate on
    # fold ``fold`` of ``folds`` (data.split.fold_split) instead of the internal val split.
    folds: Annotated[int, Field(ge=2)] | None = None
    fold: Annotated[int, Field(ge=0)] | None = None
    # Set by `muratune refit --full`: train on the whole official train split (internal val included), validate on
    # nothing; the model is scored only as a member of ensemble/cv-full.
    whole_train: bool = False
    cache_dir: str | None = None
    skip_bad_images: bool = False
    in_chans: Literal[1, 3] = 1
    num_workers: Annotated[int, Field(ge=0)] = 2

    @field_validator("root")
    @classmethod
    def _absolute_root(cls, root: str | None) -> str | None:
        """A relative root is relative to where the command runs; Tune runs trials in their own folders."""
        if root is None or root.startswith("~") or "://" in root or os.path.isabs(root):
            return root
        return os.path.abspath(root)

    @field_validator("body_parts")
    @classmethod
    def _known_parts(cls, parts: list[str] | None) -> list[str] | None:
        if parts is None:
            return None
        if not parts:
            raise ValueError("must list at least one body part, or be null for all")
        return [normalise_body_part(part) for part in parts]

    @model_validator(mode="after")
    def _fold_within_folds(self) -> DataConfig:
        if (self.folds is None) != (self.fold is None):
            raise ValueError("folds and fold must be set together (or neither)")
        if self.folds is not None and self.fold is not None and self.fold >= self.folds:
            raise ValueError(f"fold ({self.fold}) must be below folds ({self.folds})")
        if self.whole_train and self.folds is not None:
            raise ValueError("whole_train and folds exclude each other: a model trains on all train folds or on some")
        return self


class ModelConfig(_Strict):
    """Backbone construction settings that are not searched."""

    pretrained: bool = False
    weights_dir: str | None = None
    drop_rate: Annotated[float, Field(ge=0, lt=1)] = 0.0


class TrainConfig(_Strict):
    """Training-loop settings that are not searched."""

    schedule: Literal["cosine", "plateau", "constant"] = "cosine"
    warmup_epochs: Annotated[int, Field(ge=0)] = 0
    grad_clip: Annotated[float, Field(ge=0)] = 1.0
    seed: int = 0
    amp: bool = True
    channels_last: bool = True
    eval_batch_size: Annotated[int, Field(ge=1)] = 128
    max_steps_per_epoch: Annotated[int, Field(ge=1)] | None = None


class BudgetConfig(_Strict):
    """How much search to do, and ASHA's settings."""

    num_samples: Annotated[int, Field(ge=1)] = 8
    max_epochs: Annotated[int, Field(ge=1)] = 10
    grace_period: Annotated[int, Field(ge=1)] = 2
    reduction_factor: Annotated[float, Field(gt=1)] = 3
    time_budget_s: Annotated[float, Field(gt=0)] | None = None
    # asha-promotion (default): promotion-type ASHA, each trial pausing at each rung until it is in its top
    # 1/reduction_factor (Li et al. 2020; muratune.search.promotion). asha: Ray's ASHA, stopping type (a trial runs on
    # until a rung cuts it). none: FIFO. Left unset, the scheduler is asha where promotion cannot run: optuna.sampler
    # tpe, resources.workers_per_trial above 1, brackets above 1, or nothing searched
    # (`ExperimentConfig._promotion_conflict`). On
    # LCBench at 8 workers (10 seeds) promotion with Sobol start-up reached random-asha's final best 1.27x sooner,
    # stopping-type ASHA 1.00x (docs/search-efficiency.md).
    scheduler: Literal["asha", "asha-promotion", "none"] = "asha-promotion"
    brackets: Annotated[int, Field(ge=1)] = 1  # ASHA brackets (Hyperband-style); 1 = plain successive halving
    # What ASHA ranks trials by at its rungs. Study AUC by default: before a trial's probabilities cross the 0.5
    # threshold its kappa is 0 whatever it has learnt, so early-rung kappa ranks poorly (docs/performance.md).
    # Optuna still optimises val_kappa.
    rung_metric: Literal["val_auc", "val_kappa", "val_loss"] = "val_auc"

    @model_validator(mode="after")
    def _grace_within_budget(self) -> BudgetConfig:
        if self.max_epochs < self.grace_period:
            raise ValueError(f"max_epochs ({self.max_epochs}) must be >= grace_period ({self.grace_period}) for ASHA")
        return self


class ResourcesConfig(_Strict):
    """Per-trial resources and concurrency."""

    cpus_per_trial: Annotated[float, Field(gt=0)] = 2
    gpus_per_trial: Annotated[float, Field(ge=0)] = 0
    max_concurrent_trials: Annotated[int, Field(ge=1)] = 1
    workers_per_trial: Annotated[int, Field(ge=1)] = 1

    @field_validator("gpus_per_trial")
    @classmethod
    def _fraction_or_whole(cls, gpus: float) -> float:
        if gpus > 1 and gpus != int(gpus):
            raise ValueError(f"must be a fraction <= 1 or a whole number (got {gpus})")
        return gpus


class OptunaConfig(_Strict):
    """The searcher: Optuna's sampler and where its study is stored."""

    # rung-tpe (default): Optuna's TPE fitted on the values at the highest ASHA rung that `rung_min_trials` trials
    # reached (BOHB's model; muratune.search.rung_sampler), the trials stopped below it counted as bad
    # (`rung_stopped_as_bad`). On LCBench at 8 workers: median regret 0.0052 against tpe's 0.0073 and random-asha's
    # 0.0105 (docs/search-efficiency.md). tpe: Optuna's TPE on the whole study, ASHA-stopped trials ranked after full
    # ones (PRUNED, by how far they got). random: no model.
    sampler: Literal["tpe", "rung-tpe", "random"] = "rung-tpe"
    rung_min_trials: Annotated[int, Field(ge=2)] = 10
    rung_stopped_as_bad: bool = True
    seed: int | None = 0
    storage: str | None = None
    # Start-up trials before TPE: at least `startup_trials_per_worker` per concurrent worker (`startup_trials`).
    n_startup_trials: Annotated[int, Field(ge=0)] = 4
    # How rung-tpe draws its start-up trials: random, or sobol (a scrambled Sobol sequence, Optuna's QMCSampler).
    # Left unset, both follow the scheduler (`ExperimentConfig._startup_follows_the_scheduler`): under promotion-type
    # ASHA, sobol and 1 per worker; under stopping-type ASHA (or none), random and 5 per worker, where most start-up
    # trials stop at the first rung and 5 per worker reached random search's best 2.4x sooner than 2 did. On LCBench
    # promotion kept its speed at 32 workers only with 1 per worker (docs/search-efficiency.md).
    startup: Literal["random", "sobol"] = "sobol"
    startup_trials_per_worker: Annotated[int, Field(ge=0)] = 1
    prune_stopped_trials: bool = True
    # TPE settings written out rather than left to Optuna, whose defaults changed in 5.0 (both on). On LCBench at 8
    # workers the joint (multivariate) model lost to the independent one; see docs/search-efficiency.md.
    multivariate: bool = False
    constant_liar: bool = True  # running trials count as bad, so concurrent suggestions spread out

    @field_validator("storage")
    @classmethod
    def _optuna_database(cls, storage: str | None) -> str | None:
        """Optuna adds its tables to any database: refuse another project's SQLite file before anything is written."""
        if storage is not None:
            check_sqlite_schema(storage, "Optuna")
        return storage

    @model_validator(mode="after")
    def _sobol_for_rung_tpe(self) -> OptunaConfig:
        """Only rung-tpe draws its start-up trials itself; tpe's and random's would ignore the setting. (The default
        sobol gives way instead: `ExperimentConfig._startup_follows_the_scheduler`.)"""
        if self.startup == "sobol" and self.sampler != "rung-tpe" and "startup" in self.model_fields_set:
            raise ValueError(f"optuna.startup: sobol needs optuna.sampler: rung-tpe (it is {self.sampler})")
        return self

    @model_validator(mode="after")
    def _liar_for_stopped_as_bad(self) -> OptunaConfig:
        """rung-tpe shows stopped trials to TPE as running ones, which TPE reads only with the constant liar."""
        if self.sampler == "rung-tpe" and self.rung_stopped_as_bad and not self.constant_liar:
            raise ValueError("rung_stopped_as_bad needs constant_liar: true (or set rung_stopped_as_bad: false)")
        return self

    def startup_trials(self, workers: int) -> int:
        """Random start-up trials for ``workers`` concurrent trials: ``n_startup_trials``, at least
        ``startup_trials_per_worker`` per worker."""
        return max(self.n_startup_trials, self.startup_trials_per_worker * workers)


class FailureConfig(_Strict):
    """How failing trials are retried."""

    max_failures: Annotated[int, Field(ge=0)] = 1


class CheckpointSettings(_Strict):
    """Which checkpoints are kept."""

    num_to_keep: Annotated[int, Field(ge=1)] = 2


class TrackingConfig(_Strict):
    """Experiment tracking outside muratune's own files."""

    # false: off; true: a SQLite store inside the experiment folder; or a tracking URI (sqlite:///..., http://...).
    mlflow: bool | str = False

    @field_validator("mlflow")
    @classmethod
    def _uri(cls, value: bool | str) -> bool | str:
        if isinstance(value, str) and not value.strip():
            raise ValueError("must be false, true, or a tracking URI such as sqlite:///mlflow.db or http://host:5000")
        if isinstance(value, str):
            check_sqlite_schema(value.strip(), "MLflow")  # MLflow migrates any database it is given in place
        return value.strip() if isinstance(value, str) else value


class DebugConfig(_Strict):
    """Settings for tests: make matching trials fail on purpose, or start the time budget at a trial's first report."""

    fault: Literal["nan", "oom", "crash"] | None = None
    fault_epoch: Annotated[int, Field(ge=1)] = 1
    fault_backbone: str | None = None
    # Count budget.time_budget_s from the first epoch any trial reports instead of from the search's start, so a test
    # on a loaded machine does not see the budget run out while its trials are still starting.
    time_budget_from_first_report: bool = False


class ExperimentConfig(_Strict):
    """A whole experiment: data, model, training, search space, budget, resources and storage."""

    name: str = "experiment"
    storage: str = "runs"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    space: SpaceConfig = Field(default_factory=SpaceConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    optuna: OptunaConfig = Field(default_factory=OptunaConfig)
    failure: FailureConfig = Field(default_factory=FailureConfig)
    checkpoint: CheckpointSettings = Field(default_factory=CheckpointSettings)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    debug: DebugConfig = Field(default_factory=DebugConfig)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not NAME_PATTERN.fullmatch(name):
            shown = repr(name) if len(name) <= 40 else f"{name[:40]!r}... ({len(name)} characters)"
            raise ValueError(
                f"must be a short folder name: a letter or digit, then up to 99 of letters, digits, '.', '_', '-' "
                f"(got {shown})"
            )
        return name

    @field_validator("*", mode="before")
    @classmethod
    def _sections_copied(cls, value: Any) -> Any:
        """A section given (or assigned) as an object is copied: the defaults that give way below must not change
        the caller's."""
        return value.model_copy() if isinstance(value, _Strict) else value

    @model_validator(mode="after")
    def _promotion_searches(self) -> ExperimentConfig:
        """What promotion-type ASHA needs; the default scheduler gives way to stopping-type ASHA where it is missing."""
        if self.budget.scheduler != "asha-promotion":
            return self
        conflict = self._promotion_conflict()
        if conflict is None:
            return self
        if "scheduler" not in self.budget.model_fields_set:
            self.budget.scheduler = "asha"
            return self
        raise ValueError(f"budget.scheduler asha-promotion {conflict}")

    def _promotion_conflict(self) -> str | None:
        """Why promotion-type ASHA cannot run with this config (it needs a searcher to limit, a model that reads paused
        trials, resumable trials and one bracket); None if it can."""
        if not self.space.searched():
            return "needs a searched space (every space entry is fixed)"
        if self.optuna.sampler == "tpe":
            # TPE's start-up counts finished trials only, and paused ones stay RUNNING: it would sample at random.
            return "needs optuna.sampler rung-tpe or random (not tpe)"
        if self.resources.workers_per_trial > 1:
            # A data-parallel trial reports its checkpoint as a metric, which Tune cannot resume a paused trial from.
            return "needs resources.workers_per_trial: 1"
        if self.budget.brackets != 1:
            return f"runs one bracket (got budget.brackets: {self.budget.brackets})"
        return None

    @model_validator(mode="after")
    def _startup_follows_the_scheduler(self) -> ExperimentConfig:
        """Unset start-up settings (`OptunaConfig`): sobol and 1 per worker for rung-tpe under promotion-type ASHA;
        random, and 5 per worker under a stopping-type (or no) scheduler."""
        unset = {"startup", "startup_trials_per_worker"} - self.optuna.model_fields_set
        promotion = self.budget.scheduler == "asha-promotion"
        if "startup" in unset and not (promotion and self.optuna.sampler == "rung-tpe"):
            self.optuna.startup = "random"
        if "startup_trials_per_worker" in unset and not promotion:
            self.optuna.startup_trials_per_worker = STOPPING_STARTUP_PER_WORKER
        return self
