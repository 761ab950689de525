"""Command-line flags generated from a pydantic config model: every field gets one, with its description as help.

    add_config_flags(parser, EvalConfig, "eval", aliases={"timeout_s": ["--timeout"]})
    overrides = config_overrides(args, "eval")     # {"timeout_s": 30, "generation": {"temperature": 0}}

A field `num_repeats` is `--num-repeats`; a nested model's fields (`generation.temperature`) are flat flags
(`--temperature`), since their names do not collide; a field with an alias is named by it (`model_config`). Values
are typed from the field: numbers and strings as such, `Literal` fields as choices, lists as several values, booleans
as `--flag` / `--no-flag`, dicts as repeated `KEY=VALUE` (the value read as YAML: `enable_thinking=false` is a
boolean). Only flags given on the command line become overrides; the config file and the model's defaults supply the
rest, and pydantic validates the result as it does a YAML file, naming field and value.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any, Literal

import yaml
from pydantic import BaseModel, SecretStr

SEP = "."  # argparse dest = SECTION.field[.subfield]


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value) if value else ""


def _unwrap(annotation: Any) -> Any:
    """`X | None` → X."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _flag_kwargs(annotation: Any) -> dict[str, Any]:
    kind = _unwrap(annotation)
    origin = typing.get_origin(kind)
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction}
    if kind in (int, float, str):
        return {"type": kind}
    if kind is SecretStr:
        return {"type": str}
    if origin is Literal:
        return {"choices": list(typing.get_args(kind))}
    if origin is list:
        [item] = typing.get_args(kind) or (str,)
        kwargs = _flag_kwargs(item)
        return {**kwargs, "nargs": "*"}
    if origin is dict or kind is dict:
        return {"type": _key_value, "action": "append", "metavar": "KEY=VALUE"}
    return {"type": str}


def add_config_flags(
    parser: argparse.ArgumentParser, model: type[BaseModel], section: str, *,
    aliases: dict[str, list[str]] | None = None, skip: tuple[str, ...] = (),
) -> None:
    """One flag per field of `model` (and of the models nested in it), in an argument group named `section`."""
    group = parser.add_argument_group(f"{section}: settings (each an `{section}:` field of the config file)")
    _add(group, model, section, aliases or {}, skip)


def _add(group: Any, model: type[BaseModel], dest: str, aliases: dict[str, list[str]], skip: tuple[str, ...]) -> None:
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        key = info.alias or name
        kind = _unwrap(info.annotation)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            _add(group, kind, dest + SEP + key, aliases, skip)
            continue
        flags = [*aliases.get(name, []), "--" + key.replace("_", "-")]
        help_text = (info.description or "").replace("%", "%%") or None
        kwargs = _flag_kwargs(info.annotation)
        if "choices" not in kwargs and "metavar" not in kwargs and kwargs.get("action") is None:
            kwargs["metavar"] = key.upper()
        group.add_argument(*dict.fromkeys(flags), dest=dest + SEP + key, default=argparse.SUPPRESS,
                           help=help_text, **kwargs)


def config_overrides(args: argparse.Namespace, section: str) -> dict[str, Any]:
    """The flags of `section` that were given, as the nested dict the config loader merges over the file."""
    out: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if not dest.startswith(section + SEP):
            continue
        *parents, leaf = dest.split(SEP)[1:]
        node = out
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = dict(value) if isinstance(value, list) and value and isinstance(value[0], tuple) else value
    return out
