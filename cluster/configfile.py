"""Reading YAML config files into the pydantic models each package owns, with errors that name file, field, value."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from cluster.errors import ConfigError
from cluster.secrets import REDACTED, looks_secret, redact

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def validate(model: type[M], data: Any, *, source: str, section: str = "") -> M:
    """Validate `data` as `model`; a failure names the source, the dotted field path and the offending value."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source=source, section=section)) from None


def describe_validation_error(exc: ValidationError, *, source: str, section: str = "") -> str:
    problems = []
    for err in exc.errors():
        field = ".".join(str(p) for p in ((section,) if section else ()) + tuple(err["loc"]))
        value = err.get("input")
        if err["loc"] and looks_secret(str(err["loc"][-1])):
            value = REDACTED  # an error must not print the key it is about
        shown = "" if err["type"] == "missing" else f" = {redact(value)!r:.80}"
        problems.append(f"{source}: {field or '<top>'}{shown}: {err['msg']}")
    return "\n".join(problems)


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` on top of `base`, nested mappings merged key by key (lists and values replaced)."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(model: type[M], path: str | Path | None, overrides: dict[str, Any] | None = None) -> M:
    """Read and validate a config file of sections (None: flags only); `overrides` (section → fields, as CLI
    flags give them) win over the file."""
    data = load_yaml(path) if path else {}
    for section, fields in (overrides or {}).items():
        if fields:
            current = data.get(section) or {}
            if not isinstance(current, dict):
                raise ConfigError(f"{path}: section '{section}' must be a mapping, got {type(current).__name__}")
            data[section] = merge(current, fields)
    return validate(model, data, source=str(path or "command line"))


def load_section(path: str | Path, section: str, model: type[M]) -> M:
    """Load one top-level section of a YAML file (missing section → the model's defaults)."""
    data = load_yaml(path)
    return validate(model, data.get(section) or {}, source=str(path), section=section)
