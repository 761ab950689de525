"""Reading config into the pydantic models each package owns, with errors that name file, field, value.

Three layers, each over the one before: the YAML file's sections, one environment variable per field
(`EVALCLUSTER_<SECTION>__<FIELD>[__<SUBFIELD>]`, the nesting pydantic-settings spells with `env_nested_delimiter`),
and the command line's flags (`evalcluster_cli/config_flags.py`, generated from the same fields).
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError
from pydantic.fields import FieldInfo

from cluster.errors import ConfigError
from cluster.secrets import REDACTED, looks_secret, redact

ENV_PREFIX = "EVALCLUSTER_"
ENV_NESTING = "__"

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


def validate(model: type[M], data: Any, *, source: str, section: str = "",
             origins: Mapping[str, str] | None = None) -> M:
    """Validate `data` as `model`; a failure names the source, the dotted field path and the offending value.
    `origins` (dotted field → where its value came from, e.g. an environment variable) overrides `source`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source=source, section=section, origins=origins)) from None


def describe_validation_error(exc: ValidationError, *, source: str, section: str = "",
                              origins: Mapping[str, str] | None = None) -> str:
    problems = []
    for err in exc.errors():
        field = ".".join(str(p) for p in ((section,) if section else ()) + tuple(err["loc"]))
        value = err.get("input")
        if err["loc"] and looks_secret(str(err["loc"][-1])):
            value = REDACTED  # an error must not print the key it is about
        shown = "" if err["type"] == "missing" else f" = {redact(value)!r:.80}"
        problems.append(f"{(origins or {}).get(field, source)}: {field or '<top>'}{shown}: {err['msg']}")
    return "\n".join(problems)


def unwrap_optional(annotation: Any) -> Any:
    """`X | None` → X."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def config_fields(model: type[BaseModel], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], FieldInfo]]:
    """Every field of `model` a flag or an environment variable can set, nested models walked into:
    (("generation", "temperature"), its FieldInfo). Names are as the YAML spells them (aliases)."""
    for name, info in model.model_fields.items():
        key = (*path, info.alias or name)
        kind = unwrap_optional(info.annotation)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            yield from config_fields(kind, key)
        else:
            yield key, info


def nested(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """("eval", "generation", "seed"), 3 → {"eval": {"generation": {"seed": 3}}}."""
    out: Any = value
    for key in reversed(path):
        out = {key: out}
    return out


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` on top of `base`, nested mappings merged key by key (lists and values replaced)."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(model: type[M], path: str | Path | None, overrides: dict[str, Any] | None = None) -> M:
    """Read and validate a config file of sections (None: flags only). Each field's environment variable
    (`EVALCLUSTER_EVAL__NUM_REPEATS`, see `env_overrides`) wins over the file, and `overrides` (section → fields,
    as CLI flags give them) win over both."""
    data = load_yaml(path) if path else {}
    env, origins = env_overrides(model)
    for layer in (env, overrides or {}):
        for section, fields in layer.items():
            if fields:
                current = data.get(section) or {}
                if not isinstance(current, dict):
                    raise ConfigError(f"{path}: section '{section}' must be a mapping, got {type(current).__name__}")
                data[section] = merge(current, fields)
    return validate(model, data, source=str(path or "command line"), origins=origins)


def load_section(path: str | Path | None, section: str, model: type[M],
                 overrides: dict[str, Any] | None = None) -> M:
    """Load one top-level section of a YAML file (None or a missing section: the model's defaults), with its
    fields' environment variables and then `overrides` on top, as `load_config` does."""
    data = (load_yaml(path).get(section) or {}) if path else {}
    env, origins = env_overrides(model, section=section)
    data = merge(merge(data, env.get(section, {})), overrides or {})
    return validate(model, data, source=str(path or "command line"), section=section, origins=origins)


def env_name(path: tuple[str, ...]) -> str:
    """("eval", "generation", "seed") → EVALCLUSTER_EVAL__GENERATION__SEED."""
    return ENV_PREFIX + ENV_NESTING.join(key.upper() for key in path)


def text_value(annotation: Any, text: str) -> Any:
    """A field's value written as text: strings as they are, anything else read as YAML (so JSON too): `3`,
    `true`, `[tensorboard, wandb]`, `{enable_thinking: false}`. pydantic then checks it as it checks the file."""
    kind = unwrap_optional(annotation)
    literal = typing.get_origin(kind) is typing.Literal and all(isinstance(a, str) for a in typing.get_args(kind))
    if kind is str or literal or (isinstance(kind, type) and issubclass(kind, SecretStr)):
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {text!r:.80}: {exc}") from None


def env_overrides(model: type[BaseModel], *, section: str | None = None,
                  environ: Mapping[str, str] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """The fields set by environment variables, as section → fields, and where each came from (dotted field →
    variable). `model` is a config of sections (JobConfig), or with `section` that one section's model. A variable
    naming a section that is read here but no field of it is an error: a misspelt name must not be ignored."""
    environ = os.environ if environ is None else environ
    sections = {section: model} if section else {
        name: kind for name, info in model.model_fields.items()
        if isinstance(kind := unwrap_optional(info.annotation), type) and issubclass(kind, BaseModel)
    }
    fields = {env_name((name, *path)): ((name, *path), info)
              for name, section_model in sections.items() for path, info in config_fields(section_model)}
    prefixes = tuple(env_name((name,)) + ENV_NESTING for name in sections)
    data: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for var, text in sorted(environ.items()):
        if not var.startswith(prefixes):
            continue
        if var not in fields:
            close = difflib.get_close_matches(var, fields, n=1)
            raise ConfigError(f"environment: {var} names no config field"
                              + (f" (did you mean {close[0]}?)" if close else ""))
        path, info = fields[var]
        try:
            value = text_value(info.annotation, text)
        except ConfigError as exc:
            raise ConfigError(f"environment: {var}: {exc}") from None
        data = merge(data, nested(path, value))
        origins[".".join(path)] = f"environment {var}"
    return data, origins
