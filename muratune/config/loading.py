"""Reading configs: YAML files (or a shipped config by name), --set overrides, one-line validation errors."""

from __future__ import annotations

import difflib
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from muratune.config.sections import ExperimentConfig
from muratune.errors import UserError


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


def shipped_configs() -> dict[str, Path]:
    """The configs shipped with muratune (``configs/`` in a checkout), by name: demo, mura-densenet, mura-wide."""
    folder = Path(str(resources.files("muratune.configs")))
    return {path.stem: path for path in sorted(folder.glob("*.yaml"))}


def shipped_config_path(name: str) -> Path:
    """The file of a shipped config, by name.

    Raises:
        UserError: no shipped config has this name.
    """
    shipped = shipped_configs()
    if name not in shipped:
        raise UserError(f"{name}: not a config file, nor a shipped config ({', '.join(shipped)})")
    return shipped[name]


def resolve_config_path(path: str | os.PathLike) -> Path:
    """A config file: the path itself when it exists, else the shipped config of that name (``demo``)."""
    path = Path(path)
    if path.is_file() or path.suffix or len(path.parts) > 1:
        return path
    return shipped_config_path(path.name) if path.name in shipped_configs() else path


def read_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML mapping, with one-line errors naming the file."""
    path = resolve_config_path(path)
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
    return validate_config(raw, source=str(resolve_config_path(path)) if path is not None else "config")


def dump_config(config: ExperimentConfig) -> str:
    """Return the resolved config as YAML text."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
