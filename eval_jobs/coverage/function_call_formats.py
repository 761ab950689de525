"""BFCL v3 (BFCLDataset, the 23 `BFCL/` configs): a few questions of bfcl_eval's own data, and answers for them.

    right = right_answer(row, reference)   # the stored response (JSON) of a model that called what the row expects
    wrong = wrong_answer(row, "I do not know.")

The writer copies the first rows of the category's `BFCL_v3_<category>.json` and its `possible_answer/` file from
the data bfcl_eval ships (its PROMPT_PATH), in the same layout, and points the config's `path` at that copy: the
loader is AISBench's, on real BFCL rows, and the check stays small (the multi-turn checker runs every call).
A right answer is what a function-calling model returns (`vllm_api_function_call_chat`: `[{name: arguments}]`
per step), built from the row's possible answer.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

from eval_jobs.coverage.data_files import writer

ROWS = 4
DIRECTORY = "bfcl"
VERSION_PREFIX = "BFCL_v3"


@writer("BFCLDataset")
def _bfcl(dcfg: Any, root: Path) -> None:
    from bfcl_eval.constants.eval_config import PROMPT_PATH

    category = dcfg["category"]
    wanted = set(dcfg.get("test_ids") or [])
    target = root / DIRECTORY
    (target / "possible_answer").mkdir(parents=True, exist_ok=True)
    for sub in ("", "possible_answer"):
        source = Path(PROMPT_PATH) / sub / f"{VERSION_PREFIX}_{category}.json"
        if not source.exists():  # relevance categories have no possible answers: the loader makes its own
            continue
        lines = source.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if not wanted or json.loads(line)["id"] in wanted][:ROWS]
        (target / sub / source.name).write_text("\n".join(kept) + "\n", encoding="utf-8")
    dcfg["path"] = DIRECTORY


def right_answer(row: dict[str, Any], reference: str) -> str:
    """The stored response of a model whose calls match the row's possible answer (FC format)."""
    truth = json.loads(reference)
    if "multi_turn" in row["id"]:  # per turn, one step holding the turn's calls ("cd(folder='x')" strings)
        held_out = json.loads(row.get("missed_function") or "{}")
        docs = {doc["name"]: doc for doc in json.loads(row["function"]) + sum(held_out.values(), [])}
        return json.dumps([[[_call_of(text, docs) for text in turn]] if turn else [] for turn in truth])
    if "relevance" in row["id"]:  # irrelevance: no call; relevance: any call
        return json.dumps([] if "irrelevance" in row["id"] else [{"any_function": "{}"}])
    calls = []
    for expected in truth:  # {name: {parameter: [accepted values, "" when it may be left out]}}
        name, params = next(iter(expected.items()))
        args = {p: _typed(row["id"], _pick(values)) for p, values in params.items() if any(v != "" for v in values)}
        # Tool names carry "_" for ".": OpenAI's names allow no dots (bfcl_eval's convert_to_tool), and the
        # checker expects an FC model's calls under those names.
        calls.append({name.replace(".", "_"): json.dumps(args)})
    return json.dumps(calls)


def wrong_answer(row: dict[str, Any], text: str) -> str:
    """The stored response of a model that got row `row` wrong: `text` and no call, or for an irrelevance
    question (where calling nothing is right) a call."""
    return json.dumps([{"any_function": "{}"}] if "irrelevance" in row["id"] else text)


def _pick(values: list[Any]) -> Any:
    """The first accepted value; a dict's own values are lists of accepted values too."""
    value = next(v for v in values if v != "")
    if isinstance(value, dict):
        return {k: _pick(v) for k, v in value.items() if isinstance(v, list) and any(x != "" for x in v)}
    return value


def _typed(row_id: str, value: Any) -> Any:
    """Java and JavaScript functions take every argument as that language's source text ("true", "50")."""
    if not row_id.startswith(("java", "javascript")) or isinstance(value, str):
        return value
    return json.dumps(value)


def _call_of(text: str, docs: dict[str, Any]) -> dict[str, str]:
    """A call of the possible answer ("sort('a.txt')") as a tool call: positional arguments named in the order
    of the function doc's parameters."""
    call = ast.parse(text, mode="eval").body
    assert isinstance(call, ast.Call)
    name = ast.unparse(call.func)
    params = list(docs[name]["parameters"]["properties"]) if name in docs else []
    args = {params[i]: ast.literal_eval(value) for i, value in enumerate(call.args)}
    args.update({kw.arg: ast.literal_eval(kw.value) for kw in call.keywords})
    return {name: json.dumps(args)}
