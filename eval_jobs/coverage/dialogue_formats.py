"""Writers for the multi-turn conversation sets (MultiTurnGenInferencer configs): MT-Bench's question file and
ShareGPT's conversation dump. Conversations are invented, in each loader's fields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eval_jobs.coverage.data_files import QA, path_in, write_jsonl, writer

TURNS = 2  # MT-Bench's conversations have two turns; ShareGPT's any even number of messages


@writer("MTBenchDataset")
def _mtbench(dcfg: Any, root: Path) -> None:
    """question.jsonl: `prompt` (the user's turns) and, for some rows only, `reference` (an answer per turn)."""
    rows = []
    for i, (q, a) in enumerate(QA[:6]):
        row = {"question_id": 80 + i, "category": "math", "prompt": [q, f"Now add {i} to it."]}
        if i % 2 == 0:
            row["reference"] = [a, str(int(a) + i)]
        rows.append(row)
    write_jsonl(path_in(dcfg, root), rows)


@writer("ShareGPTDataset")
def _sharegpt(dcfg: Any, root: Path) -> None:
    """A JSON list of {"id", "conversations": [{"from": "human" | "gpt", "value"}]}, plus a tokenizer: the loader
    counts each answer's tokens with the model's (`model_path`, which `ais_bench` fills from the model config's
    `path`); a word-level one stands in for it here, named in the config as a user names their model's."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    conversations = []
    for i, (q, a) in enumerate(QA[:6]):
        turns = [{"from": "human", "value": q}, {"from": "gpt", "value": f"It is {a}."},
                 {"from": "human", "value": "And doubled?"}, {"from": "gpt", "value": f"It is {2 * int(a)}."}]
        conversations.append({"id": f"made-up-{i}", "conversations": turns[:2 * TURNS]})
    path_in(dcfg, root).write_text(json.dumps(conversations), encoding="utf-8")
    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    directory = root / "sharegpt-tokenizer"
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    dcfg["model_path"] = str(directory)
