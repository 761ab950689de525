"""Reports of a run, rendered and written: per-sample Parquet, summary CSV / Markdown / self-contained HTML with
plots, the console summary, config and library versions. The numbers come from `tables.py`.

    samples = samples_frame(store.load())                    # + `correct`/`extracted` columns from scoring
    table = write_report(run, samples, summarize(samples), config=cfg)
    print_summary(table)

All functions are plain synchronous pandas / file I/O: async callers run them with `asyncio.to_thread`.
A run served by the simulated-latency engine (`simulated=True`) gets a loud banner and no score columns at
all: simulator outputs never appear as a reported score.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure
from pydantic import BaseModel
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from cluster.secrets import redact
from eval_jobs.provenance import library_versions, provenance_html, provenance_md
from eval_jobs.store import RunDir
from eval_jobs.tables import GROUP, PERF_COLUMNS, SAMPLE_SCORE_COLUMNS, perf_frame, summary_table

# What print_summary shows, under which short header, when present (the files carry every column).
PRINTED_SCORES = {
    "model": "model", "dataset": "dataset", "metric": "metric", "source": "from", "value": "score", "ci": "CI",
    "n_questions": "n", "n_repeats": "rep", "failures": "fail", "error": "not scored because",
}  # fmt: skip
PRINTED_PERF = {
    "model": "model", "dataset": "dataset", "requests": "requests", "failures": "fail", "truncated_share": "cut",
    "reasoning_tokens_p50": "think tok", "answer_tokens_p50": "answer tok", "ttft_p50_s": "TTFT",
    "tpot_p50_s": "TPOT", "output_tok_per_s": "tok/s", "req_per_s": "req/s",
}  # fmt: skip
PERF_CAPTION = ("cut: share of answers cut by the length limit (finish_reason length); think tok, answer tok: median "
                "reasoning and answer tokens; TTFT, TPOT: medians in seconds; tok/s: output tokens/s; req/s: "
                "answered requests/s.")
SIMULATED_BANNER = (
    "SIMULATED ENGINE: this run was answered by the simulated-latency engine (an orchestration benchmark). "
    "Its outputs are not model outputs, so no scores are reported; only the performance columns are real."
)


def human_sections(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The summary table split for people: Scores (model × dataset × metric rows with a score) and
    Performance (one row per model × dataset; the joined table repeats perf columns for every metric)."""
    perf_only = [c for c in PERF_COLUMNS if c != "failures"]
    sections = {}
    # A score, or the reason a dataset has none (its evaluator could not score it).
    scored = table["value"].notna() if "value" in table else pd.Series(False, index=table.index)
    if "error" in table:
        scored |= table["error"].notna()
    if scored.any():
        score_cols = [c for c in table.columns if c not in perf_only]
        if "error" in table and table["error"].isna().all():
            score_cols.remove("error")
        sections["Scores"] = table.loc[scored, score_cols]
    perf_cols = GROUP + [c for c in ["simulated", *PERF_COLUMNS] if c in table.columns]
    sections["Performance"] = table.drop_duplicates(GROUP)[perf_cols].reset_index(drop=True)
    return sections


def write_report(
    run_dir: RunDir,
    samples: pd.DataFrame,
    summary: pd.DataFrame | None,
    *,
    simulated: bool = False,
    config: Mapping[str, Any] | BaseModel | None = None,
    engine_info: Mapping[str, Any] | None = None,
    title: str = "evalcluster report",
    origin: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Write samples.parquet, summary.csv/.md/.html, plots/*.png, versions.json (and config.yaml if given).

    `samples` is the per-sample frame (store records plus scoring's columns); `summary` the metric rows of
    scoring's `summarize` (None or ignored when `simulated`). Returns the summary table that was written.
    """
    run_dir.create()
    if simulated:
        samples = samples.drop(columns=[c for c in SAMPLE_SCORE_COLUMNS if c in samples.columns])
        samples = samples.assign(simulated=True)
    table = summary_table(summary, perf_frame(samples), simulated)

    write_atomic(run_dir.samples_parquet, _parquet_bytes(samples))
    write_atomic(run_dir.summary_csv, table.to_csv(index=False).encode())

    plots: dict[str, bytes] = {}
    if not simulated and "value" in table and table["value"].notna().any():
        plots["scores"] = _scores_png(table)
    if "ttft_s" in samples and samples.loc[samples["status"] == "ok", "latency_s"].notna().any():
        plots["latency"] = _latency_png(samples)
    for name in ("scores", "latency"):
        path = run_dir.plots_dir / f"{name}.png"
        if name in plots:
            write_atomic(path, plots[name])
        else:
            path.unlink(missing_ok=True)  # a stale plot from an earlier report of this run must not linger

    sections = human_sections(table)
    md = [f"# {title}", ""] + ([f"> **{SIMULATED_BANNER}**", ""] if simulated else []) + provenance_md(origin)
    for heading, frame in sections.items():
        md += [f"## {heading}", "", markdown_table(frame), ""]
    md += [f"![{name}](plots/{name}.png)" for name in plots]
    write_atomic(run_dir.summary_md, ("\n".join(md) + "\n").encode())
    write_atomic(run_dir.summary_html, html_page(title, sections, plots, simulated, origin=origin).encode())

    if config is not None:
        write_config(run_dir, config)
    write_versions(run_dir, engine_info)
    return table


def write_config(run_dir: RunDir, config: Mapping[str, Any] | BaseModel) -> Path:
    """Record the run's config as YAML, secrets redacted: every string whose key looks secret (api_key, engine.env's
    HF_TOKEN, ...; cluster.secrets.looks_secret)."""
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else dict(config)
    data = json.loads(json.dumps(data, default=str))  # Paths, enums etc. → plain YAML scalars
    write_atomic(run_dir.config_yaml, yaml.safe_dump(redact(data), sort_keys=False).encode())
    return run_dir.config_yaml


def write_versions(run_dir: RunDir, engine_info: Mapping[str, Any] | None = None) -> Path:
    """Write `library_versions(engine_info)` to versions.json."""
    text = json.dumps(library_versions(engine_info), indent=2, default=str) + "\n"
    write_atomic(run_dir.versions_json, text.encode())
    return run_dir.versions_json


def print_summary(table: pd.DataFrame, *, simulated: bool = False, console: Console | None = None) -> None:
    """Print the summary with rich: scores, then performance (see `human_sections`); a simulated run gets its
    banner first (and has no scores to print)."""
    if console is None:
        console = Console()
        if not console.is_terminal:  # a log file (e.g. a Ray job's): no reason to squeeze into 80 columns
            console.width = max(console.width, 160)
    if simulated or "simulated" in table:
        console.print(Panel(SIMULATED_BANNER, style="bold red"))
    sections = human_sections(table)
    if "Scores" in sections:
        scores = sections["Scores"].copy()
        if {"ci_low", "ci_high"} <= set(scores.columns):
            scores["ci"] = [
                "" if pd.isna(lo) or pd.isna(hi) else f"{format_cell(lo)}–{format_cell(hi)}"
                for lo, hi in zip(scores["ci_low"], scores["ci_high"])
            ]
        console.print(rich_table("Scores", scores, PRINTED_SCORES))
    console.print(rich_table("Performance", sections["Performance"], PRINTED_PERF, caption=PERF_CAPTION))


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (pandas' `to_markdown`, by tabulate); cells as `format_cell`, numbers
    right-aligned, `|` inside a cell escaped."""
    align = ["right" if pd.api.types.is_numeric_dtype(df[c]) else "left" for c in df.columns]
    cells = df.astype(object).map(lambda v: format_cell(v).replace("|", "\\|"))
    # Every cell is text by now: tabulate must not parse "1.5" back into a number and reformat it.
    return cells.to_markdown(index=False, tablefmt="pipe", colalign=align, disable_numparse=True)


def format_cell(value: Any) -> str:
    """One cell as text: 4 significant digits for floats, empty for missing values."""
    if value is None or value is pd.NA:
        return ""
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return ""
        return f"{value:.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    return str(value)


def rich_table(title: str, df: pd.DataFrame, headers: Mapping[str, str], caption: str = "") -> Table:
    """A rich table of `df`'s columns named in `headers` (under those headers), cells as `format_cell`."""
    shown = [c for c in headers if c in df.columns]
    out = Table(title=title, caption=caption, title_justify="left")
    for col in shown:
        numeric = pd.api.types.is_numeric_dtype(df[col])
        # Numbers never wrap (a folded number misreads); names fold when the terminal is narrow.
        out.add_column(headers[col], justify="right" if numeric else "left", no_wrap=numeric, overflow="fold")
    for row in df[shown].itertuples(index=False):
        out.add_row(*(format_cell(v) for v in row))
    return out


def _parquet_bytes(samples: pd.DataFrame) -> bytes:
    """Parquet of the frame; object columns holding lists/dicts (the prompt's messages) become JSON text,
    because chat messages are heterogeneous structs that Arrow can't always type."""
    df = samples.copy()
    for col in df.columns[df.dtypes == object]:
        if df[col].map(lambda v: isinstance(v, (list, dict))).any():
            df[col] = df[col].map(lambda v: v if v is None or isinstance(v, str) else json.dumps(v))
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary sibling, then rename: readers never see half a report file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _scores_png(table: pd.DataFrame) -> bytes:
    """One horizontal bar per model · dataset · metric, with its confidence interval as error bars."""
    rows = table[table["value"].notna()]
    if "source" in rows and (rows["source"] == "samples").any():
        rows = rows[rows["source"] == "samples"]  # one scale (fractions); evaluators' numbers are in the tables
    labels = [" · ".join(map(str, r)) for r in rows[["model", "dataset", "metric"]].itertuples(index=False)]
    value = rows["value"].astype("float64").to_numpy()
    low = rows["ci_low"].astype("float64").to_numpy() if "ci_low" in rows else value
    high = rows["ci_high"].astype("float64").to_numpy() if "ci_high" in rows else value
    err = np.nan_to_num(np.clip(np.vstack([value - low, high - value]), 0, None))
    # Figure without pyplot: no global backend state, safe in worker threads; the PNG is rendered by Agg.
    fig = Figure(figsize=(8, min(40, 1 + 0.35 * len(rows))))
    ax = fig.subplots()
    y = np.arange(len(rows))
    ax.barh(y, value, xerr=err, capsize=3, color="#8FB3E0", ecolor="#222222")
    for yi, v, hi in zip(y, value, high):
        # Label right of the error bar, where it can't be hidden by it.
        x = v if np.isnan(hi) else max(v, hi)
        ax.annotate(f"{v:.3g}", (x, yi), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(1.0, float(np.nanmax(np.append(high, value))) * 1.05))
    ax.set_xlabel("score (error bars: confidence interval)")
    ax.set_title("Scores")
    return png_bytes(fig)


def _latency_png(samples: pd.DataFrame) -> bytes:
    """TTFT and end-to-end latency histograms of the ok samples, one outline per model · dataset."""
    ok = samples[samples["status"] == "ok"]
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    panels = ((axes[0], "ttft_s", "time to first token (s)"), (axes[1], "latency_s", "latency (s)"))
    for ax, col, name in panels:
        values = ok[col].astype("float64").dropna()
        if values.empty:
            ax.set_visible(False)
            continue
        bins = np.histogram_bin_edges(values, bins=30)
        groups = list(ok.groupby(GROUP, sort=True))
        for (model, dataset), g in groups:
            group_values = g[col].astype("float64").dropna()
            ax.hist(group_values, bins=bins, histtype="step", label=f"{model} · {dataset}")
        ax.set_xlabel(name)
        ax.set_ylabel("samples")
        if len(groups) <= 12:
            ax.legend(fontsize=7)
    fig.suptitle("Latency distributions")
    return png_bytes(fig)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
.provenance { display: grid; grid-template-columns: max-content 1fr; gap: .1em 1em; font-size: 12px;
              background: #f6f6f6; padding: .6em .8em; border-radius: 4px; }
.provenance dt { font-weight: 600; } .provenance dd { margin: 0; word-break: break-all; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; }
td:first-child, td:nth-child(2) { text-align: left; }
.simulated { background: #b00020; color: white; font-weight: bold; font-size: 18px; padding: 1em; }
img { max-width: 100%; }
"""


def html_page(
    title: str, sections: Mapping[str, pd.DataFrame], plots: Mapping[str, bytes], simulated: bool,
    intro: str = "", origin: Mapping[str, Any] | None = None,
) -> str:
    """One self-contained page: inline CSS, the tables, plots as base64 PNGs."""
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body>"
    ]
    if simulated:
        parts.append(f"<div class='simulated'>{html.escape(SIMULATED_BANNER)}</div>")
    parts.append(f"<h1>{html.escape(title)}</h1>")
    parts.append(f"<p>Written {html.escape(time.strftime('%Y-%m-%d %H:%M:%S %Z'))}.</p>")
    parts.append(provenance_html(origin))
    if intro:
        parts.append(f"<p>{html.escape(intro)}</p>")
    for heading, frame in sections.items():
        parts.append(f"<h2>{heading}</h2>")
        parts.append(frame.to_html(index=False, border=0, na_rep="", float_format=format_cell))
    for name, png in plots.items():
        data = base64.b64encode(png).decode()
        parts.append(f"<h2>{name.capitalize()}</h2><img alt='{name}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)
