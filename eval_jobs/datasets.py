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
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.errors import ConfigError
from eval_jobs.dataset_configs import (
    CACHE_ENV,
    _dataset_dicts,
    _plain,
    _type_name,
    data_file_of,
    default_data_dir,
    expected_data_path,
    resolve_config,
)
from eval_jobs.model_config import DEFAULT_MODEL_CONFIG, ModelConfig, load_model_config
from eval_jobs.prompts import render

# Directories of media beside the data file (omnidocbench's images, videomme's videos). AISBench opens them
# relative to where it runs, its source root, which holds `ais_bench/datasets/`; the data dir stands in for that
# root here, as it does for `path` (get_data_path).
MEDIA_DIR_FIELDS = ("image_path", "video_path")


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
    # BFCL datasets (eval_jobs/function_calls.py): per row, its question's spec (`messages[i]` is then its first
    # request's messages).
    function_calls: list[dict[str, Any]] | None = None
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


@dataclass(frozen=True)
class ServedCheckpoint:
    """The one checkpoint directory a job serves and evaluates (its tokenizer is the model's)."""

    directory: Path
    trust_remote_code: bool = False


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
                  model_config: str = DEFAULT_MODEL_CONFIG,
                  served_checkpoint: ServedCheckpoint | None = None) -> list[EvalDataset]:
    """Load every dataset dict of a config (name or path) and render its rows as `model_config` (an AISBench
    model config name or path) would send them.

    Relative data paths resolve against `data_dir` (default: `default_data_dir()`), as AISBench does with
    `$AIS_BENCH_DATASETS_CACHE`. `served_checkpoint`: the checkpoint the job serves, whose tokenizer a dataset
    that counts tokens (ShareGPT, synthetic) uses when the model config has no `path`.
    """
    config_path = resolve_config(name_or_path)
    root = Path(data_dir).resolve() if data_dir is not None else default_data_dir()
    model = load_model_config(model_config)
    return [_build(dcfg, config_path, root, model, served_checkpoint) for dcfg in _dataset_dicts(config_path)]


def _build(dcfg: Any, config_path: Path, data_dir: Path, model: ModelConfig | None = None,
           served_checkpoint: ServedCheckpoint | None = None) -> EvalDataset:
    from eval_jobs import function_calls, llm_judge, multimodal, multiturn, ppl  # here, not at the top: ppl imports us
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
    _fill_model_path(build_cfg, model, where, served_checkpoint)
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
    labels, options, conversations, specs = None, None, None, None
    max_out_lens = reader.get_max_out_len()
    if ppl.is_ppl(infer_cfg):
        labels, options = ppl.render_options(dataset, infer_cfg)
        messages = [row[0] for row in options]
    elif multiturn.is_multiturn(infer_cfg):
        conversations = multiturn.render_conversations(dataset, infer_cfg, model, where)
        messages = [row["turns"][0]["messages"] for row in conversations]
        max_out_lens = None  # per turn, in `conversations`
    elif function_calls.is_function_call(infer_cfg):
        function_calls.check_modes(model, dcfg.get("eval_cfg") or {}, where)
        specs = function_calls.render_function_calls(dataset, infer_cfg, model, where)
        messages = [function_calls.sent_messages(spec["turns"][0]["messages"]) for spec in specs]
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
        function_calls=specs,
        api=model.api,
        llm_judge=llm_judge.judge_spec(dcfg, data_path),
    )


def _fill_model_path(build_cfg: Any, model: ModelConfig, where: str,
                     served_checkpoint: ServedCheckpoint | None = None) -> None:
    """A dataset class that counts tokens with the model's tokenizer (ShareGPTDataset, SyntheticDataset) gets the
    model config's `path` as `model_path`, as `ais_bench` gives it (cli/utils.py:fill_model_path_if_datasets_need);
    without one, the directory of the checkpoint the job serves (evalcluster knows it, `ais_bench` does not); a
    dataset config that names `model_path` itself keeps it when neither is there."""
    from ais_bench.benchmark.cli.utils import DATASETS_NEED_MODELS

    if _type_name(build_cfg.get("type")) not in DATASETS_NEED_MODELS:
        return
    if model.cfg.get("path"):
        build_cfg.update(model_path=model.cfg["path"], trust_remote_code=model.cfg.get("trust_remote_code", False))
    elif served_checkpoint is not None:
        build_cfg.update(model_path=str(served_checkpoint.directory),
                         trust_remote_code=served_checkpoint.trust_remote_code)
    elif not build_cfg.get("model_path"):
        raise ConfigError(f"{where}: {_type_name(build_cfg.get('type')).rsplit('.', 1)[-1]} counts tokens with the "
                          f"model's tokenizer, which AISBench takes from the model config's `path`, and "
                          f"eval.model_config {model.name} has none: serve the one checkpoint evaluated (serve.models), "
                          "or give a model config whose `path` is the model's directory (or set `model_path` in the "
                          "dataset config)")


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
