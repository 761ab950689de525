"""Command-line flags generated from a pydantic config model: every field gets one, with its description and its
environment variable as help.

    add_config_flags(parser, EvalConfig, "eval", short_names=True, aliases={"timeout_s": ["--timeout"]})
    overrides = config_overrides(args, "eval")     # {"timeout_s": 30, "generation": {"temperature": 0}}

Every field has its full name, `--SECTION.FIELD[.SUBFIELD]` (`--serve.engine.platform`, `--eval.num-repeats`), in
every command that reads that section, and the environment variable `EVALCLUSTER_SECTION__FIELD[__SUBFIELD]`
(`cluster/configfile.py` reads those). A command's own section also has short names: the field's last part
(`evalcluster eval --num-repeats`, `--temperature`) for the one shallowest field ending in it, the whole path for
the others (`--judge-endpoint` beside `--endpoint`, `--judge-generation-temperature`); older names are kept as
aliases. Values are typed from the field: numbers and strings as
such, `Literal` fields as choices, lists as several values, booleans as `--flag` / `--no-flag`, dicts as repeated
`KEY=VALUE` (the value read as YAML: `enable_thinking=false` is a boolean), lists of mappings (`serve.models`,
`sweep.checkpoints`) as one YAML value. Only flags given on the command line become overrides: file < environment
< flags, and pydantic validates the result as it does a YAML file, naming field and value.
"""

from __future__ import annotations

import argparse
import typing
from typing import Any, Literal

from pydantic import BaseModel, SecretStr

from cluster.configfile import config_fields, env_name, text_value, unwrap_optional
from cluster.errors import ConfigError

SEP = "."  # argparse dest = SECTION.field[.subfield]


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, _yaml_value(value) if value else ""


def _yaml_value(text: str) -> Any:
    """A flag's value read as its environment variable's is (text_value), with argparse's kind of error."""
    try:
        return text_value(Any, text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _flag_kwargs(annotation: Any) -> dict[str, Any]:
    kind = unwrap_optional(annotation)
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
        if isinstance(item, type) and issubclass(item, BaseModel):
            return {"type": _yaml_value, "metavar": "YAML"}
        return {**_flag_kwargs(item), "nargs": "*"}
    if origin is dict or kind is dict:
        return {"type": _key_value, "action": "append", "metavar": "KEY=VALUE"}
    return {"type": _yaml_value, "metavar": "YAML"}


def add_config_flags(
    parser: argparse.ArgumentParser, model: type[BaseModel], section: str, *, short_names: bool = False,
    aliases: dict[str, list[str]] | None = None,
) -> None:
    """One flag per field of `model` (and of the models nested in it), in an argument group named `section`.
    `aliases`: dotted field (`engine.platform`) → more names for its flag."""
    group = parser.add_argument_group(f"{section}: settings (each an `{section}:` field of the config file; "
                                      f"the flag wins over its environment variable, which wins over the file)")
    for path, info in config_fields(model):
        dotted = SEP.join(path)
        flags = [*(aliases or {}).get(dotted, []), "--" + section + SEP + dotted.replace("_", "-")]
        if short_names:
            flags.insert(0, "--" + "-".join(_short_path(model, path)).replace("_", "-"))
        description = (info.description or "").replace("%", "%%")
        kwargs = _flag_kwargs(info.annotation)
        if "choices" not in kwargs and "metavar" not in kwargs and kwargs.get("action") is None:
            kwargs["metavar"] = path[-1].upper()
        group.add_argument(*dict.fromkeys(flags), dest=section + SEP + dotted, default=argparse.SUPPRESS,
                           help=f"{description} [${env_name((section, *path))}]".lstrip(), **kwargs)


def _short_path(model: type[BaseModel], path: tuple[str, ...]) -> list[str]:
    """The path without the nested models whose fields are flat flags (`FLAT_FLAGS`): generation.temperature is
    `--temperature`, judge.model `--judge-model`, judge.generation.temperature `--judge-temperature`."""
    kept = []
    for key in path[:-1]:
        model = unwrap_optional(next(info.annotation for name, info in model.model_fields.items()
                                     if (info.alias or name) == key))
        if not getattr(model, "FLAT_FLAGS", False):
            kept.append(key)
    return [*kept, path[-1]]


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
