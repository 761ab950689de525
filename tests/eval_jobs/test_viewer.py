"""The sample viewer (samples.html) in a real headless browser: Chromium loads the page from disk, runs its script,
and the DOM it leaves is read back. Filters are driven through the URL fragment, which sets the page's controls."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from eval_jobs.store import RunDir
from eval_jobs.viewer import PAGE_ROWS, verdict, write_viewer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")


def frame(models=("step_100", "step_200"), questions: int = 120) -> pd.DataFrame:
    rows = []
    for m in models:
        for i in range(questions):
            ok = not (m == "step_100" and i == 5)
            rows.append(dict(
                model=m, dataset="demo" if i < 100 else "other", index=i, repeat=0, status="ok" if ok else "failed",
                correct=(i % 3 == 0) if m == "step_100" else (i % 2 == 0), extracted=str(i),
                prompt=[{"role": "system", "content": "be brief"},
                        {"role": "user", "content": f"What is {i}+1? </script><b>not markup</b>"}],
                response=f"answer {i} from {m}", reasoning_content="thinking hard" if i % 4 == 0 else None,
                error=None if ok else "HTTP 500: boom", finish_reason="length" if i % 10 == 0 else "stop",
                completion_tokens=12, reference=str(i + 1)))
    return pd.DataFrame(rows)


def open_page(page: Path, fragment: str, tmp_path: Path) -> tuple[str, str]:
    """(DOM after the page's script ran, the browser's console output)."""
    result = subprocess.run(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=10000", "--enable-logging=stderr", "--v=0", "--dump-dom",
         f"{page.as_uri()}#{fragment}"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    console = "\n".join(line for line in result.stderr.splitlines() if ":CONSOLE" in line)
    return result.stdout, console


def shown(dom: str) -> tuple[str, list[str]]:
    """The page's count line and the keys (dataset/index/repeat) of the cards drawn."""
    count = re.search(r'id="count">([^<]*)<', dom).group(1)
    return count, re.findall(r'data-key="([^"]+)"', dom)


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    samples = frame()
    run = RunDir(tmp_path_factory.mktemp("viewer")).create()
    return write_viewer(run, samples, {"checkpoints": {"step_100": {"path": "/ckpt/step_100", "step": 100}}}), samples


def test_loads_without_console_errors_and_draws_one_page(page, tmp_path):
    path, samples = page
    dom, console = open_page(path, "", tmp_path)
    assert console == ""
    count, keys = shown(dom)
    assert count == f"{len(samples)} samples · page 1 of {-(-len(samples) // PAGE_ROWS)}"
    assert len(keys) == PAGE_ROWS
    assert "/ckpt/step_100" in dom  # what produced it, at the top
    assert "What is 0+1? &lt;/script&gt;&lt;b&gt;not markup&lt;/b&gt;" in dom  # text, never markup


@pytest.mark.parametrize("fragment, expected", [
    ("dataset=other&verdict=wrong", lambda f: f[(f.dataset == "other") & (f.apply(verdict, axis=1) == "wrong")]),
    ("verdict=failed", lambda f: f[f.status != "ok"]),
    ("truncated=1&model=step_200", lambda f: f[(f.finish_reason == "length") & (f.model == "step_200")]),
    ("q=answer%2011%20from", lambda f: f[f.response.str.contains("answer 11 from")]),
])
def test_filters_and_search(page, tmp_path, fragment, expected):
    path, samples = page
    dom, console = open_page(path, fragment, tmp_path)
    want = expected(samples)
    count, keys = shown(dom)
    assert console == "" and count.startswith(f"{len(want)} samples")
    assert sorted(keys) == sorted(f"{r.dataset}/{r.index}/{r.repeat}" for r in want.head(PAGE_ROWS).itertuples())


def test_two_checkpoints_side_by_side_changed_verdicts_first(page, tmp_path):
    path, samples = page
    dom, console = open_page(path, "model=step_100&compare=step_200", tmp_path)
    v = samples.assign(v=samples.apply(verdict, axis=1)).pivot(index="index", columns="model", values="v")
    changed = int((v["step_100"] != v["step_200"]).sum())
    count, keys = shown(dom)
    assert console == "" and count.startswith(f"{len(v)} questions")
    cards = re.findall(r'<div class="(pair(?: changed)?)"', dom)
    assert cards[: min(changed, PAGE_ROWS)] == ["pair changed"] * min(changed, PAGE_ROWS)
    first = dom[dom.index('class="pair changed"'):]
    first = first[: first.index('class="pair', 10)]
    assert "from step_100" in first and "from step_200" in first  # both answers to the same question

    dom, _ = open_page(path, "model=step_100&compare=step_200&verdict=changed", tmp_path)
    assert shown(dom)[0].startswith(f"{changed} questions")


def test_an_llm_judged_sample_shows_the_judges_answer_or_why_no_verdict_came_of_it(tmp_path):
    samples = frame(models=("step_100",), questions=3).assign(
        judge_response=["The answer is right. Final verdict: A", "Final verdict: B", None],
        judge_error=[None, None, "the judge's request failed: HTTP 503: overloaded"])
    path = write_viewer(RunDir(tmp_path / "run").create(), samples, {})
    dom, console = open_page(path, "", tmp_path)
    assert console == "" and shown(dom)[1] == ["demo/0/0", "demo/1/0", "demo/2/0"]
    cards = dom.split("<script")[0].split('class="sample"')[1:]  # (the page's script names the blocks too)
    assert "judge's answer" in cards[0] and "Final verdict: A" in cards[0] and "judgement failed" not in cards[0]
    assert "judgement failed" in cards[2] and "HTTP 503: overloaded" in cards[2] and "judge's answer" not in cards[2]
    dom, _ = open_page(path, "q=final%20verdict%3A%20b", tmp_path)  # the search reads the judge's answers too
    assert shown(dom)[1] == ["demo/1/0"]


def test_ten_thousand_samples_open_one_page_at_a_time(tmp_path):
    samples = frame(models=("step_1",), questions=10_000).assign(response=lambda f: f.response + " " + "x" * 2000)
    path = write_viewer(RunDir(tmp_path / "big").create(), samples, {})
    dom, console = open_page(path, "page=3", tmp_path)
    count, keys = shown(dom)
    assert console == "" and count == f"10000 samples · page 4 of {10_000 // PAGE_ROWS}"
    assert keys[0] == f"other/{3 * PAGE_ROWS}/0" and len(keys) == PAGE_ROWS  # rows 100 on are "other"
