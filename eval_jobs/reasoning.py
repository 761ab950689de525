"""Reasoning answers: where an answer's reasoning ends, and answers cut before it did.

    frame = mark_reasoning(samples)   # + cut_in_reasoning, reasoning_tokens, answer_tokens
    scored_text(row)                  # what the evaluator sees: "" for an answer cut inside its reasoning

The rule (README, "Reasoning answers"): an answer is scored on what follows its reasoning, never on the reasoning.
Its reasoning is the server's `reasoning_content` (vLLM with a reasoning parser), or, inline, everything up to the
last `</think>`; AISBench's `extract_non_reasoning_content` cuts there. An answer whose reasoning never ended is
*cut in its reasoning* and scored as an empty answer (wrong), since any number in half a chain of thought is not
the model's answer:
- the server split it and the answer part is empty while the generation hit the length limit;
- the text opens `<think>` and never closes it (no reasoning parser on the server): AISBench's postprocessor would
  hand the whole reasoning to the evaluator;
- the chat template opened `<think>` in the prompt, so finished answers have a `</think>` and no `<think>`, and this
  one has neither: all of it is reasoning. That the template does so is seen from the model's other answers (any
  with a `</think>` before any `<think>`) or, for a completions prompt, from the prompt ending in `<think>`.
If every answer of such a model is cut before `</think>`, nothing in the text shows that it was reasoning: the
summary's share of answers cut by the length limit (`truncated_share`) then says so; raise `max_out_len`.

Token counts: the engine's `usage.completion_tokens_details.reasoning_tokens` when it has a reasoning parser;
otherwise the completion's tokens split in proportion to the characters before and after the reasoning's end.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

THINK_START = "<think>"  # extract_non_reasoning_content's default tokens
THINK_END = "</think>"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def split(response: str, reasoning_content: str, template_opens_think: bool) -> tuple[str, str, bool]:
    """(reasoning, answer, reasoning ended) of one answer, inline tags or the server's split."""
    if reasoning_content:
        return reasoning_content, response, True
    if THINK_END in response:
        head, _, tail = response.rpartition(THINK_END)
        return head + THINK_END, tail, True
    start = response.find(THINK_START)
    if start >= 0:
        return response[start:], response[:start], False
    if template_opens_think:
        return response, "", False
    return "", response, True


def _opens_think(group: pd.DataFrame) -> bool:
    """Whether the model's prompt opens `<think>` itself (see the module docstring)."""
    for text in group["response"]:
        text = _text(text)
        end = text.find(THINK_END)
        if end >= 0 and THINK_START not in text[:end]:
            return True
    return any(isinstance(p, str) and p.rstrip().endswith(THINK_START) for p in group.get("prompt", []))


def mark_reasoning(samples: pd.DataFrame) -> pd.DataFrame:
    """The samples frame with `cut_in_reasoning` (bool), `reasoning_tokens` and `answer_tokens` (Int64)."""
    frame = samples.copy()
    cut = pd.Series(False, index=frame.index, dtype=bool)
    reasoning_tokens = pd.Series(pd.NA, index=frame.index, dtype="Int64")
    answer_tokens = pd.Series(pd.NA, index=frame.index, dtype="Int64")
    engine_counts = frame["reasoning_tokens"] if "reasoning_tokens" in frame else pd.Series(pd.NA, index=frame.index)
    for _, group in frame.groupby("model", sort=False):
        opens = _opens_think(group)
        for i, row in group.iterrows():
            if row["status"] != "ok":
                continue
            reasoning, answer, ended = split(_text(row["response"]), _text(row.get("reasoning_content")), opens)
            length_cut = row.get("finish_reason") == "length"
            cut[i] = (not ended) or (bool(reasoning) and not answer.strip() and length_cut)
            total = row.get("completion_tokens")
            if total is None or pd.isna(total):
                continue
            known = engine_counts.get(i)
            if known is not None and not pd.isna(known):
                think = int(known)
            else:
                chars = len(reasoning) + len(answer)
                think = math.floor(int(total) * len(reasoning) / chars + 0.5) if chars else 0
            reasoning_tokens[i] = think
            answer_tokens[i] = max(0, int(total) - think)
    frame["cut_in_reasoning"] = cut
    frame["reasoning_tokens"] = reasoning_tokens
    frame["answer_tokens"] = answer_tokens
    return frame


def scored_text(response: Any, cut_in_reasoning: bool) -> str:
    """What the evaluator is given for an ok answer: nothing when it was cut inside its reasoning, else the answer
    as the server sent it (AISBench's own postprocessors then strip reasoning that ended)."""
    return "" if cut_in_reasoning else _text(response)
