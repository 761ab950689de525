"""`samples.html`: every sample of a run in one self-contained page (no server; opens from disk).

    write_viewer(run_dir, samples, provenance)     # samples: the scored per-sample frame of eval_jobs.evaluation

The answers behind a jump or a drop in a learning curve: question, answer, reasoning, extracted answer, reference
and verdict per sample (and the judge's answer where an LLM judged it), filtered by checkpoint, dataset, verdict, truncation and failure, and searched. With two
checkpoints picked, the questions they both answered stand side by side, those whose verdict changed first.
The filter state lives in the URL's fragment (`samples.html#verdict=wrong&q=boxed`), so a view can be shared.

The samples travel as one JSON document inside the page and only the current page of rows is drawn (50 at a
time), so a run of 10,000 long answers opens in a few seconds.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from eval_jobs.provenance import provenance_html
from eval_jobs.store import RunDir

PAGE_ROWS = 50
TEMPLATE = Path(__file__).with_name("viewer_page.html")  # the page's markup, style and script


def verdict(row: Mapping[str, Any]) -> str:
    if row.get("status") != "ok":
        return "failed"
    correct = row.get("correct")
    if correct is None or (isinstance(correct, float) and pd.isna(correct)):
        return "unscored"  # a simulated engine's answer, or a dataset that could not be scored
    return "right" if bool(correct) else "wrong"


def question_text(prompt: Any) -> str:
    """The last user turn of the chat messages sent (the question; earlier turns are few-shot examples)."""
    if isinstance(prompt, str):
        return prompt
    turns = [m for m in (prompt if isinstance(prompt, list) else []) if isinstance(m, dict)]
    users = [m for m in turns if m.get("role") == "user"] or turns
    content = users[-1].get("content", "") if users else ""
    if isinstance(content, list):  # content parts: keep the text ones
        content = "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


def viewer_rows(samples: pd.DataFrame) -> list[dict[str, Any]]:
    """The compact records the page draws from (short keys: 10k samples are one JSON document)."""
    rows = []
    for row in samples.to_dict("records"):
        rows.append({
            "m": str(row["model"]), "d": str(row["dataset"]), "i": int(row["index"]), "r": int(row["repeat"]),
            "q": question_text(row.get("prompt")), "a": _text(row.get("response")),
            "t": _text(row.get("reasoning_content")), "x": _text(row.get("extracted")),
            "ref": _text(row.get("reference")), "v": verdict(row), "e": _text(row.get("error")),
            "f": _text(row.get("finish_reason")), "n": _int(row.get("completion_tokens")),
            "c": bool(row.get("cut_in_reasoning") is True or row.get("cut_in_reasoning") == 1),
            # An LLM-judged dataset: the judge's answer (what its evaluator scored), or why no verdict came of it.
            "j": _text(row.get("judge_response")), "je": _text(row.get("judge_error")),
        })  # fmt: skip
    return rows


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _int(value: Any) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def write_viewer(run_dir: RunDir, samples: pd.DataFrame, provenance: Mapping[str, Any],
                 title: str = "evalcluster samples") -> Path:
    """Write `samples.html` into the run directory; returns its path."""
    from eval_jobs.report import write_atomic

    data = json.dumps({"rows": viewer_rows(samples), "page": PAGE_ROWS}, ensure_ascii=False)
    # Inside <script>, only "</" can end the element early; JSON allows "<\/" for it.
    data = data.replace("</", "<\\/")
    page = TEMPLATE.read_text().replace("{{TITLE}}", html.escape(title)).replace("{{PROVENANCE}}", provenance_html(provenance))
    page = page.replace("{{DATA}}", data)
    path = run_dir.root / "samples.html"
    write_atomic(path, page.encode())
    return path
