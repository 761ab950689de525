"""AISBench model configs: which API a run speaks and what every request carries, as `ais_bench --models NAME`.

    model = load_model_config("vllm_api_general_chat")   # or vllm_api_stream_chat, vllm_api_general, a path
    model.api                 # "chat" (VLLMCustomAPIChat: /v1/chat/completions) or "completions" (VLLMCustomAPI)
    model.request_defaults()  # {"max_tokens": 512, "temperature": 0.01, "ignore_eos": False}
    model.pred_postprocessor  # {"type": "...extract_non_reasoning_content"} or None

Names are found the way `ais_bench --models` finds them (AISBench's own `match_cfg_file` over this repo's
`configs/models/` and AISBench's shipped `configs/models/`); a path is a user's own copy. The config is read with
mmengine's `Config.fromfile`, as AISBench reads it, and the model class it names is AISBench's: its template parser
(`meta_template`) and `get_request_body` turn each dataset row into the messages or the prompt string `ais_bench`
would post (`eval_jobs.prompts.render`). Only the OpenAI-compatible vLLM API classes are taken: evalcluster sends
the requests itself, so a config for another server kind (TGI, Triton, MindIE, a local HF model) is refused by name.
The config's host, port, url, api_key and batch_size are where and how hard `ais_bench` sends: evalcluster takes
those from `eval.endpoint`, `eval.api_key` and `eval.concurrency` instead. It always streams (to measure time to
first token); a streamed answer's text is the same as a whole one.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from cluster.errors import ConfigError
from cluster.paths import REPO_ROOT

DEFAULT_MODEL_CONFIG = "vllm_api_general_chat"
REPO_MODEL_CONFIGS = REPO_ROOT / "configs" / "models"
_AIS_MODELS = "ais_bench.benchmark.models.api_models."
# Model classes whose requests evalcluster sends exactly as AISBench does, and the API each speaks.
API_OF_CLASS: dict[str, Literal["chat", "completions"]] = {
    _AIS_MODELS + "vllm_custom_api_chat.VLLMCustomAPIChat": "chat",
    _AIS_MODELS + "vllm_custom_api_chat.VLLMCustomAPIChatStream": "chat",
    _AIS_MODELS + "vllm_custom_api.VLLMCustomAPI": "completions",
    _AIS_MODELS + "vllm_custom_api.VLLMCustomAPIStream": "completions",
}
# The `model` put in rendered request bodies; a non-empty value also keeps the model class's constructor from
# asking a server's /v1/models for one (it does that when `model` is empty).
_RENDER_MODEL_NAME = "evalcluster-render"


@dataclass(frozen=True)
class ModelConfig:
    """One AISBench model config, plain (class and function references as dotted-path strings)."""

    path: str  # the config file
    cfg: dict[str, Any] = field(repr=False)  # its `models[0]`
    api: Literal["chat", "completions"]
    # A model dict inside another config (a dataset's `judge_infer_cfg.judge_model`), not a model config file.
    embedded: bool = False

    @property
    def name(self) -> str:
        return Path(self.path).stem

    @property
    def pred_postprocessor(self) -> dict[str, Any] | None:
        """Applied to every prediction before the dataset's own postprocessors (OpenICLEvalTask._score)."""
        return self.cfg.get("pred_postprocessor")

    def request_defaults(self) -> dict[str, Any]:
        """What `ais_bench` puts in every request besides the input: max_tokens (its max_out_len) and its
        generation_kwargs (num_return_sequences is AISBench's repeat count, not a request field)."""
        kwargs = dict(self.cfg.get("generation_kwargs") or {})
        kwargs.pop("num_return_sequences", None)
        return {"max_tokens": self.cfg.get("max_out_len"), **kwargs}

    @property
    def num_return_sequences(self) -> int | None:
        """Repeats the config asks for (AISBench re-sends each prompt this many times), if it says."""
        value = (self.cfg.get("generation_kwargs") or {}).get("num_return_sequences")
        return int(value) if value is not None else None

    def build(self) -> Any:
        """AISBench's model object for this config (rendering only: it sends nothing)."""
        return _construct(self.cfg, self.path) if self.embedded else _built_model(self.path)


def resolve_model_config(name_or_path: str | Path) -> Path:
    """The config file of a model config name (as `ais_bench --models NAME`) or path."""
    from ais_bench.benchmark.utils.file.file import match_cfg_file

    from eval_jobs.dataset_configs import given_config_file, shipped_configs_dir

    text = str(name_or_path)
    if (path := given_config_file(text, f"eval.model_config = {text!r}: model config file not found")) is not None:
        return path
    roots = [str(d) for d in (REPO_MODEL_CONFIGS, shipped_configs_dir() / "models") if d.is_dir()]
    try:
        [(_, found)] = match_cfg_file(roots, [text])[:1]
    except Exception:  # AISBench's FileMatchError: no match, or several
        names = sorted({p.stem for root in roots for p in Path(root).rglob("*.py") if p.name != "__init__.py"})
        close = difflib.get_close_matches(text, names, n=5, cutoff=0.5)
        hint = f"; did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(f"eval.model_config = {text!r}: no such model config in {REPO_MODEL_CONFIGS} or "
                          f"AISBench's configs/models{hint}") from None
    return Path(found).resolve()


def load_model_config(name_or_path: str | Path = DEFAULT_MODEL_CONFIG) -> ModelConfig:
    """Read an AISBench model config by name or path; refuse one evalcluster cannot send as AISBench would."""
    return _load(str(resolve_model_config(name_or_path)))


@lru_cache(maxsize=16)
def _load(path: str) -> ModelConfig:
    from mmengine.config import Config

    from eval_jobs.dataset_configs import _plain

    try:
        cfg = Config.fromfile(path)
    except Exception as exc:  # mmengine wraps syntax and import errors in many types
        raise ConfigError(f"{path}: cannot load model config: {exc}") from None
    models = cfg.get("models")
    if not isinstance(models, list) or not models:
        raise ConfigError(f"{path}: a model config defines `models = [dict(...)]`; this one does not")
    if len(models) > 1:
        raise ConfigError(f"{path}: defines {len(models)} models; evalcluster takes one model config per run")
    return checked_model_config(_plain(models[0]), path, "models[0]")


def checked_model_config(plain: dict[str, Any], path: str, field: str, embedded: bool = False) -> ModelConfig:
    """`plain` (a model dict, `_plain`'d) as a ModelConfig, refused unless evalcluster can send as its class does.
    `field` names it in errors: `models[0]` of a model config file, or a dataset's `judge_infer_cfg.judge_model`."""
    kind = plain.get("type")
    api = API_OF_CLASS.get(kind) if isinstance(kind, str) else None
    if api is None:
        raise ConfigError(
            f"{path}: {field}.type = {kind!r}: not an OpenAI-compatible vLLM API model; evalcluster sends "
            f"requests as {', '.join(sorted({k.rsplit('.', 1)[-1] for k in API_OF_CLASS}))} do"
        )
    max_out_len = plain.get("max_out_len")
    if max_out_len is not None and (not isinstance(max_out_len, int) or isinstance(max_out_len, bool)
                                    or max_out_len < 1):
        raise ConfigError(f"{path}: {field}.max_out_len = {max_out_len!r}: must be an integer >= 1")
    kwargs = plain.get("generation_kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise ConfigError(f"{path}: {field}.generation_kwargs = {kwargs!r}: must be a dict")
    return ModelConfig(path=path, cfg=plain, api=api, embedded=embedded)


@lru_cache(maxsize=16)
def _built_model(path: str) -> Any:
    return _construct(_load(path).cfg, path)


def _construct(model_cfg: dict[str, Any], path: str) -> Any:
    from ais_bench.benchmark.utils.config import build_model_from_cfg

    cfg = copy.deepcopy(model_cfg)
    cfg["model"] = _RENDER_MODEL_NAME
    cfg["path"] = ""  # a tokenizer path is for AISBench's perf mode; rendering needs none
    try:
        return build_model_from_cfg(cfg)
    except Exception as exc:
        raise ConfigError(f"{path}: AISBench cannot build this model config: {exc}") from None
