"""Evaluation datasets from AISBench dataset configs, rendered into the exact chat messages `ais_bench` sends.

    ds = load_dataset("aime2025_gen_0_shot_chat_prompt")     # or a path to a config .py
    ds.messages[0]    # [{"role": "user", "content": "...\\nRemember to put your final answer within ..."}]
    ds.references[0]  # "70"

Rendering goes through AISBench's own code: its dataset class (`build_dataset_from_cfg`), its retriever and
prompt template, the template parser of the run's model config (`eval.model_config`, default
`vllm_api_general_chat`; `eval_jobs/model_config.py`) and that model's `get_request_body`, so each row is what
`ais_bench --models MODEL_CONFIG` would post: chat messages, or with a completions config (`vllm_api_general`)
the prompt string its `meta_template` makes.
AISBench is imported lazily (it costs ~7-12 s), and `EvalDataset` holds plain data only (it is pickled to
Ray actors): class and function references in configs become dotted-path strings, which AISBench's
registries resolve again when scoring (the same form `ais_bench` itself dumps its task configs in).
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import fnmatch
import importlib.util
import inspect
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.errors import ConfigError
from cluster.paths import REPO_ROOT, evalcluster_home
from eval_jobs.model_config import DEFAULT_MODEL_CONFIG, ModelConfig, load_model_config
from eval_jobs.prompts import render

CACHE_ENV = "AIS_BENCH_DATASETS_CACHE"
# Directories of media beside the data file (omnidocbench's images, videomme's videos). AISBench opens them
# relative to where it runs, its source root, which holds `ais_bench/datasets/`; the data dir stands in for that
# root here, as it does for `path` (get_data_path).
MEDIA_DIR_FIELDS = ("image_path", "video_path")
REPO_DATASET_CONFIGS = REPO_ROOT / "configs" / "datasets"
GENERAL_CHAT_MODEL = "models/vllm_api/vllm_api_general_chat.py"


@dataclass(frozen=True)
class DatasetConfigInfo:
    """One dataset dict of a dataset config file, and where its data file is expected."""

    name: str  # config name = file name without .py, as `ais_bench --datasets NAME` takes it
    abbr: str  # the dataset's abbr (its name in reports)
    config_path: Path
    data_path: Path | None  # None when the config has no `path`
    data_exists: bool
    error: str | None = None  # set when the config file itself does not load (abbr is then "")


@dataclass
class EvalDataset:
    """One dataset, rendered: row i is sent as `messages[i]` and scored against `references[i]`.

    `messages[i]` is what the model config's `get_request_body` puts in the request: the chat messages for a chat
    config (`api` "chat", sent to /v1/chat/completions), the prompt string for a completions config (`api`
    "completions", /v1/completions).

    `eval_cfg` and `model_pred_postprocessor` are AISBench config dicts with dotted-path `type` strings;
    `n`/`k` are the dataset-level repeat settings (AISBench defaults 1/[1]); `max_out_lens` holds per-row
    output limits when the dataset has a `max_out_len` input column (they take priority in AISBench).
    """

    name: str
    config_name: str
    config_path: str
    data_path: str | None
    messages: list[list[dict[str, Any]] | str]
    references: list[Any]
    rows: list[dict[str, Any]]
    output_column: str | None
    eval_cfg: dict[str, Any]
    model_pred_postprocessor: dict[str, Any] | None
    n: int = 1
    k: tuple[int, ...] = (1,)
    max_out_lens: list[int | None] | None = None
    api: str = "chat"
    # PPL datasets (eval_jobs/ppl.py): the option labels, and per row each option's messages (`messages[i]` is then
    # the first option's, for anything that shows one prompt per row).
    ppl_labels: list[str] | None = None
    ppl_options: list[list[list[dict[str, Any]]]] | None = None
    # Multi-turn datasets (eval_jobs/multiturn.py): per row, its conversation's turns (`messages[i]` is then the
    # scored turn's messages: the first turn's, or in mode `last` the one request).
    conversations: list[dict[str, Any]] | None = None
    # LLM-judged datasets (eval_jobs/llm_judge.py): the judge stage's dataset, infer and judge_model configs.
    llm_judge: dict[str, Any] | None = None

    @property
    def is_ppl(self) -> bool:
        return self.ppl_options is not None

    def request_input(self, index: int) -> dict[str, Any]:
        """The request body's input field for row `index`: `messages` (chat) or `prompt` (completions)."""
        return {"prompt" if self.api == "completions" else "messages": self.messages[index]}

    def __len__(self) -> int:
        return len(self.messages)


def default_data_dir() -> Path:
    """`$AIS_BENCH_DATASETS_CACHE` if set (AISBench's own convention), else `<evalcluster home>/datasets`."""
    return Path(os.environ.get(CACHE_ENV) or evalcluster_home() / "datasets")


def shipped_configs_dir() -> Path:
    """AISBench's `benchmark/configs` directory, found without importing ais_bench."""
    spec = importlib.util.find_spec("ais_bench")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("ais_bench is not installed in this environment (pip install ais-bench-benchmark)")
    return Path(next(iter(spec.submodule_search_locations))) / "benchmark" / "configs"


def _config_files() -> list[tuple[str, Path]]:
    """All dataset config files as (name, path): this repo's first, then AISBench's, like `--config-dir`."""
    found: list[tuple[str, Path]] = []
    for root in (REPO_DATASET_CONFIGS, shipped_configs_dir() / "datasets"):
        if root.is_dir():
            found += sorted((p.stem, p) for p in root.rglob("*.py") if p.name != "__init__.py")
    return found


def given_config_file(name_or_path: str | Path, not_found: str) -> Path | None:
    """The file `name_or_path` names if it is a path (ends in .py or has a directory), as AISBench takes config
    arguments; None for a bare name. A path to no file raises ConfigError(`not_found`)."""
    text = str(name_or_path)
    if not (text.endswith(".py") or os.sep in text):
        return None
    path = Path(text).expanduser()
    if not path.is_file():
        raise ConfigError(not_found)
    return path.resolve()


def resolve_config(name_or_path: str | Path) -> Path:
    """The config file for a dataset config name or path; unknown names get close matches suggested."""
    text = str(name_or_path)
    if (path := given_config_file(text, f"{text}: dataset config file not found")) is not None:
        return path
    files = _config_files()
    # AISBench matches names case-insensitively (utils/file/file.py:match_files), first match wins.
    for name, path in files:
        if name.lower() == text.lower():
            return path
    names = sorted({n for n, _ in files})
    # Names that extend what was typed first (`aime2025` → aime2025_gen…), then difflib's nearest ones.
    close = [n for n in names if n.lower().startswith(text.lower())][:5]
    close += [n for n in difflib.get_close_matches(text, names, n=5, cutoff=0.5) if n not in close]
    close = close[:5]
    hint = f"; did you mean: {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"dataset = {text!r}: no such dataset config in {REPO_DATASET_CONFIGS} "
        f"or AISBench's configs/datasets{hint}"
    )


def _dataset_dicts(config_path: Path) -> list[Any]:
    """The dataset dicts a config defines: every top-level `*_datasets` list (as `ais_bench --datasets`)."""
    from mmengine.config import Config

    try:
        cfg = Config.fromfile(str(config_path))
    except Exception as exc:  # mmengine wraps syntax and import errors in many types
        raise ConfigError(f"{config_path}: cannot load dataset config: {exc}") from None
    dicts = [d for key in cfg.keys() if key.endswith("_datasets") for d in cfg[key]]
    if not dicts:
        raise ConfigError(f"{config_path}: defines no variable ending in '_datasets'")
    return dicts


def data_file_of(dcfg: Any) -> str | None:
    """The config's data file as written in it: `data_files` for Hugging Face loaders (FewCLUE's HFDataset and
    friends call `load_dataset(path, data_files=...)`, where `path` names a builder such as "json"), else `path`."""
    data_files = dcfg.get("data_files")
    return data_files if isinstance(data_files, str) else dcfg.get("path")


def expected_data_path(path: str | None, data_dir: Path) -> Path | None:
    """Where AISBench looks for `path` (datasets/utils/datasets.py:get_data_path): absolute as is, else under
    the data dir."""
    if not path:
        return None
    return Path(path) if os.path.isabs(path) else data_dir / path


def find_dataset_configs(pattern: str, data_dir: str | Path | None = None) -> list[DatasetConfigInfo]:
    """Dataset configs whose name contains `pattern` (or matches it as a shell glob; case-insensitive), like
    `ais_bench --search --datasets PATTERN`, with the data file each expects under `data_dir`.

    One entry per dataset dict (a config may define many); helper modules that define no `*_datasets` are
    skipped, and a config that fails to load is listed with its `error` (AISBench ships some, e.g. race_gen).
    """
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    pattern = pattern.lower()
    if not any(c in pattern for c in "*?["):
        pattern = f"*{pattern}*"  # a plain name finds every config containing it, as users search
    infos = []
    for name, path in _config_files():
        if not fnmatch.fnmatch(name.lower(), pattern):
            continue
        try:
            dicts = _dataset_dicts(path)
        except ConfigError as exc:
            if "defines no variable" not in str(exc):
                infos.append(DatasetConfigInfo(name, "", path, None, False, error=str(exc)))
            continue
        for dcfg in dicts:
            data_path = expected_data_path(data_file_of(dcfg), root)
            infos.append(
                DatasetConfigInfo(
                    name=name,
                    abbr=str(dcfg.get("abbr", name)),
                    config_path=path,
                    data_path=data_path,
                    data_exists=data_path is not None and data_path.exists(),
                )
            )
    return infos


def load_dataset(name_or_path: str | Path, data_dir: str | Path | None = None,
                 model_config: str = DEFAULT_MODEL_CONFIG) -> EvalDataset:
    """Load and render the one dataset a config defines (see `load_datasets` for configs with several)."""
    datasets = load_datasets(name_or_path, data_dir, model_config)
    if len(datasets) != 1:
        abbrs = ", ".join(d.name for d in datasets)
        raise ConfigError(
            f"{datasets[0].config_path}: defines {len(datasets)} datasets ({abbrs}); "
            "use load_datasets() for all"
        )
    return datasets[0]


def load_datasets(name_or_path: str | Path, data_dir: str | Path | None = None,
                  model_config: str = DEFAULT_MODEL_CONFIG) -> list[EvalDataset]:
    """Load every dataset dict of a config (name or path) and render its rows as `model_config` (an AISBench
    model config name or path) would send them.

    Relative data paths resolve against `data_dir` (default: `default_data_dir()`), as AISBench does with
    `$AIS_BENCH_DATASETS_CACHE`.
    """
    config_path = resolve_config(name_or_path)
    root = Path(data_dir).resolve() if data_dir is not None else default_data_dir()
    model = load_model_config(model_config)
    return [_build(dcfg, config_path, root, model) for dcfg in _dataset_dicts(config_path)]


def _build(dcfg: Any, config_path: Path, data_dir: Path, model: ModelConfig | None = None) -> EvalDataset:
    from eval_jobs import llm_judge, multimodal, multiturn, ppl  # here, not at the top: ppl imports us
    from eval_jobs.support import check_evaluator_builds, missing_evaluator_packages, unsupported

    abbr = str(dcfg.get("abbr", config_path.stem))
    where = f"{config_path}: dataset {abbr!r}"
    infer_cfg = dcfg.get("infer_cfg") or {}
    refusal = unsupported(dcfg)
    if refusal:
        raise ConfigError(f"{where}: {refusal}")
    n, k = _repeats(dcfg, where)
    data_path = expected_data_path(data_file_of(dcfg), data_dir)
    if data_path is not None and not data_path.exists():
        field = "data_files" if isinstance(dcfg.get("data_files"), str) else "path"
        raise ConfigError(
            f"{where}: data file not found: {data_path} ({field} = {dcfg.get(field)!r} resolved "
            f"against the data dir {data_dir}; set data_dir or ${CACHE_ENV})"
        )
    build_cfg = copy.deepcopy(dcfg)
    # Build each row once: with n > 1 AISBench's BaseDataset repeats every row n times; evalcluster does the
    # repeats itself (sample keys carry the repeat number).
    build_cfg.pop("n", None)
    build_cfg.pop("k", None)
    model = model or load_model_config()
    _fill_model_path(build_cfg, model, where)
    for field in MEDIA_DIR_FIELDS:
        if isinstance(build_cfg.get(field), str):
            build_cfg[field] = str(expected_data_path(build_cfg[field], data_dir))
    # Refused before the first request: a run must not send a dataset it cannot score at the end.
    missing = missing_evaluator_packages(dcfg.get("eval_cfg") or {})
    if missing:
        raise ConfigError(f"{where}: its evaluator needs {', '.join(missing)}, not installed here")
    check_evaluator_builds(dcfg.get("eval_cfg") or {}, where)
    dataset = build_rows(build_cfg, data_dir, data_path, where)
    reader = dataset.reader
    test = dataset.test
    labels, options, conversations = None, None, None
    max_out_lens = reader.get_max_out_len()
    if ppl.is_ppl(infer_cfg):
        labels, options = ppl.render_options(dataset, infer_cfg)
        messages = [row[0] for row in options]
    elif multiturn.is_multiturn(infer_cfg):
        conversations = multiturn.render_conversations(dataset, infer_cfg, model, where)
        messages = [row["turns"][0]["messages"] for row in conversations]
        max_out_lens = None  # per turn, in `conversations`
    else:
        messages = render(dataset, infer_cfg, model)
        if multimodal.is_multimodal(infer_cfg):
            multimodal.check_media(messages, where)
    rows = [dict(row) for row in test]
    output_column = reader.output_column
    return EvalDataset(
        name=abbr,
        config_name=config_path.stem,
        config_path=str(config_path),
        data_path=str(data_path) if data_path else None,
        messages=messages,
        references=[row[output_column] for row in rows] if output_column else [None] * len(rows),
        rows=rows,
        output_column=output_column,
        eval_cfg=_plain(dcfg.get("eval_cfg") or {}),
        model_pred_postprocessor=model.pred_postprocessor,
        n=n,
        k=k,
        max_out_lens=list(max_out_lens) if max_out_lens is not None else None,
        ppl_labels=labels,
        ppl_options=options,
        conversations=conversations,
        api=model.api,
        llm_judge=llm_judge.judge_spec(dcfg, data_path),
    )


def _fill_model_path(build_cfg: Any, model: ModelConfig, where: str) -> None:
    """A dataset class that counts tokens with the model's tokenizer (ShareGPTDataset) gets the model config's
    `path` as `model_path`, as `ais_bench` gives it (cli/utils.py:fill_model_path_if_datasets_need); a dataset
    config that names `model_path` itself keeps it when the model config has none."""
    from ais_bench.benchmark.cli.utils import DATASETS_NEED_MODELS

    if _type_name(build_cfg.get("type")) not in DATASETS_NEED_MODELS:
        return
    if model.cfg.get("path"):
        build_cfg.update(model_path=model.cfg["path"], trust_remote_code=model.cfg.get("trust_remote_code", False))
    elif not build_cfg.get("model_path"):
        raise ConfigError(f"{where}: {_type_name(build_cfg.get('type')).rsplit('.', 1)[-1]} counts tokens with the "
                          f"model's tokenizer, which AISBench takes from the model config's `path`, and "
                          f"eval.model_config {model.name} has none: give a model config whose `path` is the "
                          "model's directory (or set `model_path` in the dataset config)")


def build_rows(build_cfg: Any, data_dir: Path, data_path: Path | None, where: str) -> Any:
    """AISBench's dataset class on the data file (its `.test` rows), every reader column checked."""
    from ais_bench.benchmark.utils.config import build_dataset_from_cfg

    with _datasets_cache(data_dir):
        try:
            dataset = build_dataset_from_cfg(build_cfg)
        except Exception as exc:
            raise ConfigError(f"{where}: AISBench could not load {data_path or 'the data'}: {exc}") from None
    reader = dataset.reader
    # Input columns the loader does not produce at all are AISBench's to judge: it renders without one the
    # prompt template never uses (longbench passage_count lists `input` and has none).
    present = [c for c in reader.input_columns if c in dataset.test.column_names]
    _check_columns(dataset.test, [*present, reader.output_column], data_path, where)
    return dataset


def _repeats(dcfg: Any, where: str) -> tuple[int, tuple[int, ...]]:
    """Dataset-level `n` (repeats) and `k` (int or list); OpenICLEvalTask._score defaults both to 1."""
    n = dcfg.get("n", 1)
    k = dcfg.get("k", 1)
    ks = tuple(k) if isinstance(k, (list, tuple)) else (k,)
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"{where}: n = {n!r}: must be an integer >= 1")
    if not ks or not all(isinstance(x, int) and 1 <= x <= n for x in ks):
        raise ConfigError(f"{where}: k = {k!r}: must be integers with 1 <= k <= n = {n}")
    return n, ks


@contextlib.contextmanager
def _datasets_cache(data_dir: Path) -> Iterator[None]:
    """Point AISBench's relative dataset paths at `data_dir` for the build, then restore the old value.

    get_data_path reads the variable at call time, so setting it around the build is enough. Not thread-safe
    (the environment is process-wide): load datasets from one thread at a time.
    """
    old = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(data_dir)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = old


def _check_columns(test: Any, columns: list[str | None], data_path: Path | None, where: str) -> None:
    """Every row must have the reader's input and answer columns, else name the file and row (1-based)."""
    names = set(test.column_names)
    for column in (c for c in columns if c):
        missing = None
        if column not in names:
            missing = 0
        else:
            missing = next((i for i, v in enumerate(test[column]) if v is None), None)
        if missing is None:
            continue
        # datasets.Dataset.from_list takes its columns from the FIRST row only: a key missing there drops the
        # whole column, so for JSONL files find the real first offending line in the file itself.
        line = _first_jsonl_line_without(data_path, column) if data_path else None
        row = f"line {line}" if line else f"row {missing + 1}"
        raise ConfigError(f"{where}: {data_path or 'data'} {row}: no {column!r} field (reader_cfg column)")


def _first_jsonl_line_without(path: Path, column: str) -> int | None:
    if path.suffix != ".jsonl" or not path.is_file():
        return None
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                obj = json.loads(line)
                if not isinstance(obj, dict) or obj.get(column) is None:
                    return number
    return None


def _type_name(obj: Any) -> str:
    """A class or function as AISBench writes it in dumped configs (utils/config/run.py:get_config_type)."""
    if isinstance(obj, str) or obj is None:
        return obj or ""
    return f"{obj.__module__}.{obj.__name__}"


def _plain(obj: Any) -> Any:
    """Config data as plain dicts/lists/scalars; classes and functions become dotted-path strings."""
    if isinstance(obj, dict):
        return {str(key): _plain(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(value) for value in obj]
    if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return _type_name(obj)
    return obj
