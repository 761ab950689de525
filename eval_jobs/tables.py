"""The report's numbers, computed apart from how they are shown: the per-sample frame of a run's records, the
performance figures per model × dataset, and the summary table that joins them to the scores.

    samples = samples_frame(store.load())            # + `correct`/`extracted` columns from scoring
    table = summary_table(summarize(samples), perf_frame(samples))

`report.py` renders and writes them (Parquet, CSV, Markdown, HTML, the console).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

from eval_jobs.reasoning import mark_reasoning
from eval_jobs.records import SampleResult

GROUP = ["model", "dataset"]
# Per-sample columns scoring adds; dropped from a simulated run's samples.parquet.
SAMPLE_SCORE_COLUMNS = ["correct", "score", "extracted"]
PERF_COLUMNS = [
    "requests", "failures", "truncated_share", "cut_in_reasoning", "reasoning_tokens_p50", "answer_tokens_p50",
    "ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "tpot_p50_s", "tpot_p90_s", "output_tok_per_s", "req_per_s", "wall_s",
]  # fmt: skip


def samples_frame(results: Iterable[SampleResult]) -> pd.DataFrame:
    """Store records as a frame: one row per record, every SampleResult field plus `tpot_s`."""
    columns = [*SampleResult.model_fields, "tpot_s"]
    df = pd.DataFrame([{**r.model_dump(), "tpot_s": r.tpot_s} for r in results], columns=columns)
    # Explicit numeric dtypes: an all-None column (no usage reported, nothing answered yet) stays numeric.
    # Text columns keep the installed pandas' default string dtype.
    for col in ("index", "repeat", "attempts"):
        df[col] = df[col].astype("int64")
    for col in ("prompt_tokens", "completion_tokens", "reasoning_tokens"):
        df[col] = df[col].astype("Int64")
    for col in ("ttft_s", "latency_s", "tpot_s", "started_at", "finished_at"):
        df[col] = df[col].astype("float64")
    return mark_reasoning(df)


def perf_frame(samples: pd.DataFrame) -> pd.DataFrame:
    """Per model × dataset: requests, failures, TTFT / TPOT percentiles (s), output tokens/s, ok requests/s.

    Throughputs divide by `wall_s`, the time during which at least one of the group's requests was in flight,
    so the gap between a crashed run and its resume doesn't count.
    """
    rows = []
    for (model, dataset), g in samples.groupby(GROUP, sort=True):
        ok = g[g["status"] == "ok"]
        ttft = ok["ttft_s"].astype("float64").dropna()
        tpot = _tpot(ok).dropna()
        end = g["finished_at"] if "finished_at" in g else pd.Series(np.nan, index=g.index)
        wall = _busy_seconds(g["started_at"], end.fillna(g["started_at"] + g["latency_s"]))
        tokens = float(ok["completion_tokens"].fillna(0).sum())
        rows.append({
            "model": model, "dataset": dataset,
            "requests": len(g), "failures": int((g["status"] != "ok").sum()),
            "truncated_share": _share_cut_by_length(ok),
            "cut_in_reasoning": int(ok["cut_in_reasoning"].sum()) if "cut_in_reasoning" in ok else 0,
            "reasoning_tokens_p50": _q(_tokens(ok, "reasoning_tokens"), 0.5),
            "answer_tokens_p50": _q(_tokens(ok, "answer_tokens"), 0.5),
            "ttft_p50_s": _q(ttft, 0.5), "ttft_p90_s": _q(ttft, 0.9), "ttft_p99_s": _q(ttft, 0.99),
            "tpot_p50_s": _q(tpot, 0.5), "tpot_p90_s": _q(tpot, 0.9),
            "output_tok_per_s": tokens / wall if wall > 0 else math.nan,
            "req_per_s": len(ok) / wall if wall > 0 else math.nan,
            "wall_s": wall,
        })  # fmt: skip
    return pd.DataFrame(rows, columns=GROUP + PERF_COLUMNS)


def _share_cut_by_length(ok: pd.DataFrame) -> float:
    """Share of answered samples the engine stopped at the length limit (OpenAI finish_reason "length")."""
    if not len(ok) or "finish_reason" not in ok:
        return math.nan
    return float((ok["finish_reason"] == "length").fillna(False).mean())


def _tokens(ok: pd.DataFrame, column: str) -> pd.Series:
    return ok[column].astype("float64").dropna() if column in ok else pd.Series(dtype="float64")


def summary_table(summary: pd.DataFrame | None, perf: pd.DataFrame, simulated: bool = False) -> pd.DataFrame:
    """The reported table: one row per model × dataset × metric, the group's perf columns alongside.

    Outer join: a model × dataset whose samples all failed still gets a row (no metric), so failures show.
    Simulated: perf rows only, marked `simulated`, with every score column left out.
    """
    if simulated or summary is None or not set(GROUP) <= set(summary.columns):
        table = perf.copy()
        if simulated:
            table.insert(len(GROUP), "simulated", True)
        return table
    # The scorer's failure count is the one reported; perf's would be the same number twice.
    perf = perf.drop(columns=[c for c in perf.columns if c in summary.columns and c not in GROUP])
    return summary.merge(perf, on=GROUP, how="outer", sort=False).reset_index(drop=True)


def _tpot(ok: pd.DataFrame) -> pd.Series:
    """Seconds per output token after the first (as SampleResult.tpot_s), from the frame's columns."""
    tokens = ok["completion_tokens"].astype("float64")
    tpot = (ok["latency_s"].astype("float64") - ok["ttft_s"].astype("float64")) / (tokens - 1)
    return tpot.where(tokens >= 2)


def _q(values: pd.Series, q: float) -> float:
    return float(values.quantile(q)) if len(values) else math.nan


def _busy_seconds(starts: pd.Series, ends: pd.Series) -> float:
    """Length of the union of the [start, end] intervals (NaNs dropped)."""
    spans = sorted((s, e) for s, e in zip(starts, ends) if not (pd.isna(s) or pd.isna(e)))
    total, reach = 0.0, -math.inf  # reach: the latest end seen so far; spans come sorted by start
    for s, e in spans:
        total += max(0.0, e - max(s, reach))  # only the part not already covered counts
        reach = max(reach, e)
    return float(total)
