"""Schemas of the artifacts stages hand to each other (``ensemble.json``, ``trial.json``), checked before use.

A tampered or corrupt artifact is refused with one line naming the file and the field. Unknown keys:

- ``ensemble.json`` and its member entries forbid them: muratune writes every key, and a misspelt one (``"TTA"``)
  must not silently fall back to a default.
- ``trial.json`` allows them at the top level (its record carries free-form metrics and hyperparameters, and is
  written by search, train and data-parallel workers), but its ``data_config``, which feeds the model, forbids them.

Old artifacts still load: ``thresholds_tuned`` (old) or ``tune_thresholds`` (new) in ``ensemble.json``, and
``settings`` (old) or ``experiment_config`` (new) in ``trial.json``.

Both ensemble writers (``muratune ensemble`` and ``muratune refit``) build an `EnsembleSpec` and write its
`EnsembleSpec.to_json`, so ``ensemble.json`` is defined here alone (torch-free: the report imports it).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from muratune.constants import BODY_PARTS
from muratune.errors import UserError
from muratune.layout import CV_ENSEMBLE, CV_FULL_ENSEMBLE

ENSEMBLE_FORMAT: Final = 1  # the ``format`` of ``ensemble.json``
GLOBAL_WEIGHTS: Final = "all"  # key of the weights used for every body part without weights of its own
# The strategies `muratune ensemble` builds (ensemble/select.py); refit writes the cv ensemble (layout.CV_ENSEMBLE).
STRATEGIES: Final = ("best-single", "top-k-mean", "greedy", "greedy-per-body-part")
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 2048  # as the experiment config allows (data.image_size)

Number = StrictFloat  # ints pass (1 -> 1.0); strings and booleans do not
Unit = Annotated[Number, Field(ge=0, le=1)]
Name = Annotated[StrictStr, Field(min_length=1)]


class DataConfig(BaseModel):
    """How a member's input is made: square size, resize mode, channels and normalisation (in [0, 1] units)."""

    model_config = ConfigDict(extra="forbid")

    image_size: Annotated[StrictInt, Field(ge=MIN_IMAGE_SIZE, le=MAX_IMAGE_SIZE)]
    resize_mode: Literal["pad", "stretch"]
    in_chans: Literal[1, 3]
    mean: list[Annotated[Number, Field(ge=0, le=1, allow_inf_nan=False)]]
    std: list[Annotated[Number, Field(gt=0, le=1, allow_inf_nan=False)]]

    @model_validator(mode="after")
    def _one_value_per_channel(self) -> DataConfig:
        for name in ("mean", "std"):
            if len(getattr(self, name)) != self.in_chans:
                raise ValueError(f"{name} has {len(getattr(self, name))} value(s) for in_chans {self.in_chans}")
        return self


class TrialRecord(BaseModel):
    """``trial.json``: what rebuilds a trained model (timm name and data config) and what it scored."""

    model_config = ConfigDict(extra="allow")

    backbone: Name
    data_config: DataConfig
    muratune_version: StrictStr | None = None
    hyperparameters: dict[str, Any] = {}
    model: dict[str, Any] | None = None
    epoch: Annotated[StrictInt, Field(ge=0)] | None = None
    metrics: dict[str, Any] = {}
    experiment_config: dict[str, Any] | None = Field(
        default=None, validation_alias=AliasChoices("experiment_config", "settings")
    )


class MemberEntry(BaseModel):
    """One member of ``ensemble.json``: its folder inside the ensemble and the checksum of its weights."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    path: Name
    trial_id: StrictStr | None = None
    backbone: StrictStr | None = None
    data_config: DataConfig | None = None
    sha256: Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    source: StrictStr | None = None


class CalibrationSpec(BaseModel):
    """The ``calibration`` of ``ensemble.json``: temperature scaling of the study probability, per body part.

    ``p' = sigmoid(logit(p) / T)`` with ``T = temperature[body_part]``, else ``temperature["all"]``. The map is
    monotone and keeps 0.5, so ranks (AUC) and, with thresholds mapped through it, every label stay the same.
    """

    model_config = ConfigDict(extra="forbid")

    method: Literal["temperature"] = "temperature"
    fitted_on: Literal["internal-val", "out-of-fold"]
    temperature: dict[str, Annotated[Number, Field(gt=0, allow_inf_nan=False)]]

    @field_validator("temperature")
    @classmethod
    def _temperature_by_body_part(cls, value: dict[str, float]) -> dict[str, float]:
        if GLOBAL_WEIGHTS not in value:
            raise ValueError(f"needs an {GLOBAL_WEIGHTS!r} entry (and optionally one per body part)")
        unknown = sorted(set(value) - set(BODY_PARTS) - {GLOBAL_WEIGHTS})
        if unknown:
            raise ValueError(f"unknown body part {unknown[0]!r}; expected one of {', '.join(BODY_PARTS)}")
        return value


PREDICTORS: Final = ("cv", "cv-full", "best-single", "greedy")  # what `muratune refit` may make the default


class DefaultChoice(BaseModel):
    """The ``default`` of ``ensemble.json`` (and ``ensemble/default.json``): which predictor of the experiment is
    the default, why, and the out-of-fold evidence: the cv ensemble against its best configuration alone, paired on
    the same held-out studies (differences are cv minus the configuration; a kappa gain and a log-loss loss are
    improvements)."""

    model_config = ConfigDict(extra="forbid")

    predictor: Literal["cv", "cv-full", "best-single", "greedy"]
    path: StrictStr  # where it lies, relative to the experiment folder (an ensemble or a checkpoint folder)
    rule: StrictStr
    reason: StrictStr
    configuration: StrictStr | None = None  # the best single configuration the cv ensemble was compared with
    evidence: dict[str, Any] = {}


class EnsembleSpec(BaseModel):
    """``ensemble.json``: members, per-body-part weights and thresholds, and test-time augmentation.

    The fields are in the order the file lists them. A cross-validated ensemble (``muratune refit``) also has the
    strategy chosen on out-of-fold predictions, the folds and epochs of its fold models, each configuration's weight,
    the configurations left out (``--drop-failed``) with the error of their failed fold model, and its out-of-fold
    metrics; an ensemble of search trials has its internal-val metrics instead.

    ``calibration`` (absent in old files: no calibration) maps the study probability; ``thresholds`` are then in the
    calibrated space (the tuned thresholds mapped through the same function), so labels do not change.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    format: Literal[1] = ENSEMBLE_FORMAT
    muratune_version: StrictStr | None = None
    strategy: StrictStr | None = None
    selected_strategy: StrictStr | None = None
    size: Annotated[StrictInt, Field(ge=1)] | None = None
    ranked_by: StrictStr | None = None  # the rank_by of top-k-mean: kappa or loss
    tta: StrictBool = False
    calibration: CalibrationSpec | None = None
    thresholds: dict[str, Unit] = {}
    threshold_default: Unit = 0.5
    tune_thresholds: StrictBool = Field(
        default=False, validation_alias=AliasChoices("tune_thresholds", "thresholds_tuned")
    )
    folds: Annotated[StrictInt, Field(ge=2)] | None = None
    epochs: Annotated[StrictInt, Field(ge=1)] | None = None
    weights: dict[str, list[Annotated[Number, Field(ge=0, allow_inf_nan=False)]]]
    data_config: DataConfig | None = None
    val_score: dict[str, Any] = {}
    configurations: dict[str, Annotated[Number, Field(ge=0, allow_inf_nan=False)]] = {}
    dropped_configurations: dict[str, StrictStr] = {}
    oof_score: dict[str, Any] = {}
    test_score: dict[str, Any] = {}
    default: DefaultChoice | None = None
    members: Annotated[list[MemberEntry], Field(min_length=1)]

    def to_json(self) -> dict[str, Any]:
        """The ``ensemble.json`` content: ``format`` and the keys the writer gave (current names), in file order.

        An ensemble without calibration leaves the key out, as files written before calibration existed do.
        """
        content = {"format": self.format, **self.model_dump(mode="json", exclude_unset=True)}
        for key in ("calibration", "default"):
            if key in content and content[key] is None:
                del content[key]
        return content

    @field_validator("strategy", "selected_strategy")
    @classmethod
    def _known_strategy(cls, value: str | None) -> str | None:
        """A strategy is one muratune builds: the name reaches the report's HTML and CSV, so nothing else passes."""
        known = (*STRATEGIES, CV_ENSEMBLE, CV_FULL_ENSEMBLE)
        if value is not None and value not in known:
            shown = value if len(value) <= 40 else value[:40] + "..."
            raise ValueError(f"unknown strategy {shown!r}; expected one of {', '.join(known)}")
        return value

    @field_validator("thresholds")
    @classmethod
    def _thresholds_by_body_part(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(BODY_PARTS))
        if unknown:
            raise ValueError(f"unknown body part {unknown[0]!r}; expected one of {', '.join(BODY_PARTS)}")
        return value

    @model_validator(mode="after")
    def _weights_fit_the_members(self) -> EnsembleSpec:
        if GLOBAL_WEIGHTS not in self.weights:
            raise ValueError(f"weights: needs an {GLOBAL_WEIGHTS!r} entry (and optionally one per body part)")
        for part, vector in self.weights.items():
            where = f"weights.{part}"
            if part != GLOBAL_WEIGHTS and part not in BODY_PARTS:
                raise ValueError(f"{where}: unknown body part")
            if len(vector) != len(self.members):
                raise ValueError(f"{where}: {len(vector)} weight(s) for {len(self.members)} member(s)")
            total = float(sum(vector))
            if not (math.isfinite(total) and total > 0):
                raise ValueError(f"{where}: the weights must have a finite, positive sum (got {total})")
        return self


def describe_error(source: str | os.PathLike, err: ValidationError) -> str:
    """One line naming the file, the first invalid field and why (``+N more`` when there are more)."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: {loc + ': ' if loc else ''}{message}{more}"


def _validate(model: type[BaseModel], raw: Any, source: str | os.PathLike) -> Any:
    if not isinstance(raw, dict):
        raise UserError(f"{source}: expected a JSON object at the top level, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise UserError(describe_error(source, err)) from None


def validate_ensemble(raw: Any, source: str | os.PathLike) -> EnsembleSpec:
    """Check ``ensemble.json`` content.

    Raises:
        UserError: a wrong type, range or key, naming ``source`` and the field.
    """
    return _validate(EnsembleSpec, raw, source)


def validate_trial(raw: Any, source: str | os.PathLike) -> TrialRecord:
    """Check ``trial.json`` content.

    Raises:
        UserError: a wrong type, range or key, naming ``source`` and the field.
    """
    return _validate(TrialRecord, raw, source)


def read_json(path: str | os.PathLike) -> dict:
    """Read a JSON file with a clear error when it is missing or malformed."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: invalid JSON ({err.msg} at line {err.lineno})") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start}); JSON files are UTF-8") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read the file ({err.strerror or err})") from None


def read_ensemble_spec(path: str | os.PathLike) -> EnsembleSpec:
    """Read and check an ``ensemble.json`` file."""
    return validate_ensemble(read_json(path), Path(path))


def read_trial_record(path: str | os.PathLike) -> TrialRecord:
    """Read and check a ``trial.json`` file."""
    return validate_trial(read_json(path), Path(path))


class RefitConfiguration(BaseModel):
    """One configuration of ``refit.json``: its search trial, hyperparameters and internal-val scores."""

    model_config = ConfigDict(extra="forbid")

    trial_id: Name
    hparams: Annotated[dict[str, Any], Field(min_length=1)]
    val_kappa: Annotated[Number, Field(allow_inf_nan=False)] | None = None
    val_auc: Annotated[Number, Field(allow_inf_nan=False)] | None = None
    checkpoint: StrictStr = ""
    peak_epoch: Annotated[StrictInt, Field(ge=1)] | None = None  # its search trial's best-checkpoint epoch
    epochs: Annotated[StrictInt, Field(ge=1)] | None = None  # what its models train (older plans: the plan's epochs)


class RefitPlanRecord(BaseModel):
    """``refit.json``: the configurations a refit trains, each on ``folds`` folds for ``epochs`` epochs."""

    model_config = ConfigDict(extra="forbid")

    top: Annotated[StrictInt, Field(ge=1)] | None = None  # plans written before --top was recorded lack it
    folds: Annotated[StrictInt, Field(ge=2)]
    epochs: Annotated[StrictInt, Field(ge=1)]
    epochs_rule: Literal["fixed", "peak"] = "fixed"  # peak: each configuration its own epochs (older plans: fixed)
    split_seed: StrictInt
    configurations: Annotated[list[RefitConfiguration], Field(min_length=1)]

    @field_validator("configurations")
    @classmethod
    def _one_entry_per_trial(cls, value: list[RefitConfiguration]) -> list[RefitConfiguration]:
        ids = [c.trial_id for c in value]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"trial {repeated[0]} is listed more than once")
        return value


def read_default_choice(path: str | os.PathLike) -> DefaultChoice:
    """Read and check ``ensemble/default.json``."""
    return _validate(DefaultChoice, read_json(path), Path(path))


def read_refit_plan(path: str | os.PathLike) -> RefitPlanRecord:
    """Read and check a ``refit.json`` file."""
    return _validate(RefitPlanRecord, read_json(path), Path(path))
