"""Reports: every file written, numbers and plots in the HTML, perf hand-checked, simulated runs unscored."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pandas.testing as pdt
import pytest
import yaml
from rich.console import Console

from eval_jobs.records import SampleResult
from eval_jobs.report import SIMULATED_BANNER, markdown_table, print_summary, write_report
from eval_jobs.tables import perf_frame, samples_frame
from eval_jobs.store import RunDir


def sample(model: str, index: int, *, start: float, ok: bool = True, tokens: int = 11) -> SampleResult:
    # latency 1.0 s, TTFT 0.2 s, so TPOT = 0.8 / (tokens - 1).
    return SampleResult(
        model=model,
        dataset="demo",
        index=index,
        repeat=0,
        status="ok" if ok else "failed",
        error=None if ok else "HTTP 500: boom (attempt 3 of 3)",
        endpoint="http://127.0.0.1:8000",
        prompt=[{"role": "user", "content": f"q{index}"}],
        response=str(index) if ok else "",
        finish_reason="stop" if ok else None,
        prompt_tokens=5 if ok else None,
        completion_tokens=tokens if ok else None,
        ttft_s=0.2 if ok else None,
        latency_s=1.0 if ok else None,
        attempts=1 if ok else 3,
        started_at=start,
        finished_at=start + (1.0 if ok else 2.0),
    )


@pytest.fixture
def samples() -> pd.DataFrame:
    results = [
        # model "a": two overlapping requests [0, 1] and [0.5, 1.5], then a gap, then [10, 11]: busy 2.5 s.
        sample("a", 0, start=0.0),
        sample("a", 1, start=0.5),
        sample("a", 2, start=10.0, tokens=21),
        # model "b": one ok [100, 101], one failed after retries [101, 103]: busy 3 s.
        sample("b", 0, start=100.0),
        sample("b", 1, start=101.0, ok=False),
    ]
    df = samples_frame(results)
    df["correct"] = [True, False, True, True, None]  # what scoring adds
    df["extracted"] = ["0", "7", "2", "0", None]
    return df


@pytest.fixture
def summary() -> pd.DataFrame:
    """Metric rows as scoring's summarize() gives them."""
    return pd.DataFrame(
        {
            "model": ["a", "b"],
            "dataset": ["demo", "demo"],
            "metric": ["avg@1", "avg@1"],
            "value": [0.6667, 0.5],
            "stderr": [0.3333, 0.5],
            "ci_low": [0.0, 0.0],
            "ci_high": [1.0, 1.0],
            "n_questions": [3, 2],
            "n_repeats": [1, 1],
            "failures": [0, 1],
        }
    )


def test_perf_columns_by_hand(samples: pd.DataFrame) -> None:
    perf = perf_frame(samples).set_index("model")
    a, b = perf.loc["a"], perf.loc["b"]
    assert (a["requests"], a["failures"], b["requests"], b["failures"]) == (3, 0, 2, 1)
    assert a["wall_s"] == pytest.approx(2.5) and b["wall_s"] == pytest.approx(3.0)
    assert a["output_tok_per_s"] == pytest.approx((11 + 11 + 21) / 2.5)
    assert a["req_per_s"] == pytest.approx(3 / 2.5)
    assert b["req_per_s"] == pytest.approx(1 / 3.0)  # only answered requests count as throughput
    assert a["ttft_p50_s"] == pytest.approx(0.2) and a["ttft_p99_s"] == pytest.approx(0.2)
    # TPOTs 0.08, 0.08, 0.04 → median 0.08; p90 interpolates between the two 0.08s.
    assert a["tpot_p50_s"] == pytest.approx(0.08) and a["tpot_p90_s"] == pytest.approx(0.08)
    assert b["tpot_p50_s"] == pytest.approx(0.08)


def test_samples_frame_matches_the_records() -> None:
    res = sample("a", 0, start=0.0)
    df = samples_frame([res])
    assert df.loc[0, "tpot_s"] == pytest.approx(res.tpot_s)
    assert df.loc[0, "prompt"] == res.prompt
    empty = samples_frame([])
    assert list(empty.columns) == list(df.columns) and empty.empty
    numeric = ["index", "repeat", "attempts", "prompt_tokens", "completion_tokens", "ttft_s", "latency_s",
               "tpot_s", "started_at", "finished_at"]  # fmt: skip
    pdt.assert_series_equal(empty.dtypes[numeric], df.dtypes[numeric])


def test_write_report_writes_every_file(tmp_path: Path, samples: pd.DataFrame, summary: pd.DataFrame) -> None:
    run = RunDir(tmp_path / "run")
    config = {"eval": {"datasets": ["demo"], "max_tokens": 16, "api_key": "sk-secret"}, "out": Path("/x")}
    table = write_report(run, samples, summary, config=config, engine_info={"vllm": "0.32.0"})

    for path in (run.samples_parquet, run.summary_csv, run.summary_md, run.summary_html, run.config_yaml,
                 run.versions_json, run.plots_dir / "scores.png", run.plots_dir / "latency.png"):  # fmt: skip
        assert path.is_file() and path.stat().st_size > 0, path

    # One row per model × dataset × metric, perf columns joined on, the scorer's failure count kept.
    expected = summary.merge(perf_frame(samples).drop(columns="failures"), on=["model", "dataset"])
    pdt.assert_frame_equal(table, expected)
    pdt.assert_frame_equal(pd.read_csv(run.summary_csv), table, check_dtype=False)

    back = pd.read_parquet(run.samples_parquet)
    assert list(back.columns) == list(samples.columns)
    for column in ("prompt", "parts"):  # messages, and a PPL question's options, kept as JSON text
        assert json.loads(back.loc[0, column]) == samples.loc[0, column]
    pdt.assert_frame_equal(back.drop(columns=["prompt", "parts"]), samples.drop(columns=["prompt", "parts"]))

    html = run.summary_html.read_text()
    assert html.count("data:image/png;base64,") == 2
    assert "<td>0.6667</td>" in html and "<td>17.2</td>" in html  # a score and output tok/s (43 / 2.5)
    assert SIMULATED_BANNER not in html
    md = run.summary_md.read_text()
    assert re.search(r"\| a +\| demo +\| avg@1 +\| +0\.6667 \|", md) and "![scores](plots/scores.png)" in md

    cfg = yaml.safe_load(run.config_yaml.read_text())
    assert cfg == {"eval": {"datasets": ["demo"], "max_tokens": 16, "api_key": "***"}, "out": "/x"}
    versions = json.loads(run.versions_json.read_text())
    assert versions["engine"] == {"vllm": "0.32.0"}
    assert versions["pandas"] == pd.__version__ and versions["python"]


def test_all_failed_group_still_reported(tmp_path: Path, summary: pd.DataFrame) -> None:
    df = samples_frame([sample("c", 0, start=0.0, ok=False), sample("c", 1, start=0.0, ok=False)])
    table = write_report(RunDir(tmp_path), df, summary)
    row = table[table["model"] == "c"].iloc[0]
    assert row["requests"] == 2 and math.isnan(row["value"]) and math.isnan(row["ttft_p50_s"])
    # No sample answered: no latency plot, and the page still renders.
    assert not (tmp_path / "plots" / "latency.png").exists()
    assert "<h2>Performance</h2>" in (tmp_path / "summary.html").read_text()


def test_simulated_run_has_a_banner_and_no_scores(
    tmp_path: Path, samples: pd.DataFrame, summary: pd.DataFrame
) -> None:
    run = RunDir(tmp_path)
    table = write_report(run, samples, summary, simulated=True)

    assert not {"metric", "value", "stderr", "ci_low", "ci_high"} & set(table.columns)
    assert table["simulated"].all()
    html = run.summary_html.read_text()
    assert html.index(SIMULATED_BANNER) < html.index("<table")
    assert html.count("data:image/png;base64,") == 1  # latency only, no score plot
    assert not (run.plots_dir / "scores.png").exists()
    assert run.summary_md.read_text().splitlines()[2] == f"> **{SIMULATED_BANNER}**"
    csv = pd.read_csv(run.summary_csv)
    assert "value" not in csv.columns and csv["simulated"].all()
    back = pd.read_parquet(run.samples_parquet)
    assert "correct" not in back.columns and "extracted" not in back.columns and back["simulated"].all()

    console = Console(record=True, width=200)
    print_summary(table, console=console)
    printed = console.export_text()
    assert "SIMULATED ENGINE" in printed and "avg@1" not in printed


def test_print_summary_and_markdown(summary: pd.DataFrame) -> None:
    console = Console(record=True, width=250)
    print_summary(summary, console=console)
    text = console.export_text()
    assert "avg@1" in text and "0.6667" in text and "SIMULATED" not in text
    md = markdown_table(pd.DataFrame({"name": ["a|b"], "x": [1.5], "y": [float("nan")]}))
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in md.splitlines()]
    assert cells[0] == ["name", "x", "y"] and cells[2] == ["a\\|b", "1.5", ""]
    assert [c[0] == ":" for c in cells[1]] == [True, False, False] and all(c.endswith(":") for c in cells[1][1:])
