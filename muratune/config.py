"""Experiment configuration: pydantic models (extra keys forbidden), YAML loading and --set overrides."""

from __future__ import annotations

import difflib
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from muratune.constants import BODY_PARTS
from muratune.errors import UserError

HYPERPARAMETERS = ("backbone", "lr", "batch_size", "finetune_depth", "augment_policy", "weight_decay", "optimizer")
# Metrics ASHA can rank trials by at its rungs, with their direction.
RUNG_METRICS: dict[str, str] = {"val_auc": "max", "val_kappa": "max", "val_loss": "min"}
OPTIMIZERS = ("adam", "adamw", "sgd")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Where the data is and how images are prepared."""

    root: str | None = None
    image_size: Annotated[int, Field(ge=16, le=2048)] = 224
    resize_mode: Literal["pad", "stretch"] = "pad"
    body_parts: list[str] | None = None
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1
    split_seed: int = 0
    cache_dir: str | None = None
    skip_bad_images: bool = False
    in_chans: Literal[1, 3] = 1
    num_workers: Annotated[int, Field(ge=0)] = 2

    @field_validator("body_parts")
    @classmethod
    def _known_parts(cls, parts: list[str] | None) -> list[str] | None:
        if parts is None:
            return None
        if not parts:
            raise ValueError("must list at least one body part, or be null for all")
        normalised = [p if p.upper().startswith("XR_") else f"XR_{p}" for p in parts]
        normalised = [p.upper() for p in normalised]
        unknown = [p for p, n in zip(parts, normalised, strict=True) if n not in BODY_PARTS]
        if unknown:
            raise ValueError(f"unknown body part {unknown[0]!r}; choose from {', '.join(BODY_PARTS)}")
        return normalised


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


class SpaceEntry(_Strict):
    """One searched hyperparameter: a categorical choice or a numeric range."""

    type: Literal["choice", "loguniform", "uniform", "int", "fixed"]
    values: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    value: Any = None

    @model_validator(mode="after")
    def _check_shape(self) -> SpaceEntry:
        if self.type == "choice":
            if not self.values:
                raise ValueError("a choice needs a non-empty 'values' list")
            return self
        if self.type == "fixed":
            if self.value is None:
                raise ValueError("a fixed entry needs a 'value'")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} range needs 'low' and 'high'")
        if not self.low < self.high:
            raise ValueError(f"'low' ({self.low}) must be below 'high' ({self.high})")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"a loguniform range needs 'low' > 0 (got {self.low})")
        return self

    def candidate_values(self) -> list[Any]:
        """Values this entry can take, for checks: the choices, the fixed value, or the bounds."""
        if self.type == "choice":
            return list(self.values or [])
        if self.type == "fixed":
            return [self.value]
        return [self.low, self.high]

    def default(self) -> Any:
        """A representative value: the first choice, the fixed value, or the (geometric) middle of the range."""
        if self.type == "choice":
            return self.values[0]  # type: ignore[index]
        if self.type == "fixed":
            return self.value
        if self.type == "loguniform":
            return math.sqrt(self.low * self.high)  # type: ignore[operator]
        middle = (self.low + self.high) / 2  # type: ignore[operator]
        return round(middle) if self.type == "int" else middle


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fixed(value: Any) -> SpaceEntry:
    return SpaceEntry(type="fixed", value=value)


class SpaceConfig(_Strict):
    """The searched hyperparameters; a plain scalar in YAML means a fixed value."""

    backbone: SpaceEntry = Field(default_factory=lambda: SpaceEntry(type="choice", values=["resnet10t"]))
    lr: SpaceEntry = Field(default_factory=lambda: SpaceEntry(type="loguniform", low=1e-4, high=3e-3))
    batch_size: SpaceEntry = Field(default_factory=lambda: _fixed(32))
    finetune_depth: SpaceEntry = Field(default_factory=lambda: _fixed("all"))
    augment_policy: SpaceEntry = Field(default_factory=lambda: _fixed("flip"))
    weight_decay: SpaceEntry = Field(default_factory=lambda: _fixed(1e-5))
    optimizer: SpaceEntry = Field(default_factory=lambda: _fixed("adamw"))

    @model_validator(mode="before")
    @classmethod
    def _scalars_are_fixed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {
                k: v if isinstance(v, dict | SpaceEntry) else {"type": "fixed", "value": v} for k, v in data.items()
            }
        return data

    @model_validator(mode="after")
    def _check_values(self) -> SpaceConfig:
        for value in self.lr.candidate_values():
            if not _is_number(value) or value <= 0:
                raise ValueError(f"lr: learning rates must be positive numbers (got {value!r})")
        for value in self.weight_decay.candidate_values():
            if not _is_number(value) or value < 0:
                raise ValueError(f"weight_decay: must be a number >= 0 (got {value!r})")
        for value in self.batch_size.candidate_values():
            if not _is_number(value) or value < 1 or value != int(value):
                raise ValueError(f"batch_size: must be a positive integer (got {value!r})")
        for value in self.optimizer.candidate_values():
            if value not in OPTIMIZERS:
                raise ValueError(f"optimizer: unknown optimizer {value!r}; choose from {', '.join(OPTIMIZERS)}")
        for value in self.finetune_depth.candidate_values():
            if not (value == "all" or (_is_number(value) and value == int(value) and value >= 0)):
                raise ValueError(f"finetune_depth: must be 'all' or an integer >= 0 (got {value!r})")
        for name in ("backbone", "augment_policy"):
            entry = getattr(self, name)
            if entry.type not in ("choice", "fixed"):
                raise ValueError(f"{name}: must be a choice or a fixed value, not a {entry.type} range")
        return self

    def searched(self) -> list[str]:
        """Names of the hyperparameters that are actually searched (not fixed)."""
        return [name for name, entry in self.entries().items() if entry.type != "fixed"]

    def entries(self) -> dict[str, SpaceEntry]:
        """Return the hyperparameters by name."""
        return {name: getattr(self, name) for name in HYPERPARAMETERS}

    def defaults(self) -> dict[str, Any]:
        """Return one representative point of the space (used by `muratune train`)."""
        return {name: entry.default() for name, entry in self.entries().items()}


class BudgetConfig(_Strict):
    """How much search to do, and ASHA's settings."""

    num_samples: Annotated[int, Field(ge=1)] = 8
    max_epochs: Annotated[int, Field(ge=1)] = 10
    grace_period: Annotated[int, Field(ge=1)] = 2
    reduction_factor: Annotated[float, Field(gt=1)] = 3
    time_budget_s: Annotated[float, Field(gt=0)] | None = None
    scheduler: Literal["asha", "none"] = "asha"
    # What ASHA ranks trials by at its rungs. Study AUC by default: before a trial's probabilities cross the 0.5
    # threshold its kappa is 0 whatever it has learnt, so early-rung kappa ranks poorly (Spearman with the trial's
    # final kappa 0.37, against 0.57 for AUC, over 27 full bench trials). Optuna still optimises val_kappa.
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

    sampler: Literal["tpe", "random"] = "tpe"
    seed: int | None = 0
    storage: str | None = None
    n_startup_trials: Annotated[int, Field(ge=0)] = 4
    prune_stopped_trials: bool = True


class FailureConfig(_Strict):
    """How failing trials are retried."""

    max_failures: Annotated[int, Field(ge=0)] = 1


class CheckpointSettings(_Strict):
    """Which checkpoints are kept."""

    num_to_keep: Annotated[int, Field(ge=1)] = 2


class DebugConfig(_Strict):
    """Fault injection for testing failure handling: make matching trials fail on purpose."""

    fault: Literal["nan", "oom", "crash"] | None = None
    fault_epoch: Annotated[int, Field(ge=1)] = 1
    fault_backbone: str | None = None


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
    debug: DebugConfig = Field(default_factory=DebugConfig)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise ValueError(f"must be a plain folder name (got {name!r})")
        return name


# ------------------------------------------------------------------------------------------- loading
class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` (no dot) as a float, as people write learning rates, and refuses a key
    given twice in one mapping (PyYAML keeps the last silently, so a repeated block would drop the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark.line)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if first != key_node.start_mark.line:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given at line {first + 1})", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _format_validation_error(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"] if p not in ("function-after",)) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = f"unknown key{_did_you_mean(first['loc'])}"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: {key}: {message}{more}"


def _did_you_mean(loc: tuple) -> str:
    model: type[BaseModel] = ExperimentConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return ""
        model = field.annotation
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse one ``--set key.sub=value`` override; the value is read as YAML."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected KEY=VALUE, e.g. budget.num_samples=4")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise UserError(f"--set {text!r}: empty key")
    try:
        value = _yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Return ``raw`` with each ``key.sub=value`` override applied."""
    for text in overrides:
        path, value = parse_override(text)
        _set_path(raw, path, value)
    return raw


def _set_path(raw: dict, path: list[str], value: Any) -> None:
    node = raw
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def read_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML mapping, with one-line errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        raw = _yaml_load(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as err:
        byte = f"byte {err.start}: 0x{err.object[err.start]:02x}"
        raise UserError(f"{path}: not UTF-8 text ({byte}); save the config as UTF-8") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read the config ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{where}: invalid YAML ({getattr(err, 'problem', err)})") from None
    if raw is None:
        raise UserError(f"{path}: the config file is empty; give at least one setting (or no config for the defaults)")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of config keys at the top level")
    return raw


def validate_config(raw: dict, source: str = "config") -> ExperimentConfig:
    """Validate a raw mapping into an ExperimentConfig, raising a one-line UserError naming the key."""
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise UserError(_format_validation_error(source, err)) from None


def load_config(
    path: str | os.PathLike | None, overrides: list[str] | None = None, values: dict[str, Any] | None = None
) -> ExperimentConfig:
    """Load a YAML config (or the defaults when ``path`` is None) and apply overrides.

    Args:
        path: the YAML file, or None for the defaults.
        overrides: ``key.sub=value`` strings (values read as YAML), as given to ``--set``.
        values: ``{"key.sub": value}`` set as they are, after ``overrides`` (e.g. ``--data`` paths).
    """
    raw = read_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, overrides or [])
    for key, value in (values or {}).items():
        _set_path(raw, key.split("."), value)
    return validate_config(raw, source=str(path) if path is not None else "config")


def dump_config(config: ExperimentConfig) -> str:
    """Return the resolved config as YAML text."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
