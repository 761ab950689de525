"""Answers cut inside their reasoning are never scored on the reasoning text: the rule of eval_jobs/reasoning.py with
AISBench's real evaluator (the demo dataset's MATHEvaluator and the model config's extract_non_reasoning_content)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from eval_jobs.datasets import EvalDataset, load_dataset
from eval_jobs.demo_dataset import DEMO_CONFIG
from eval_jobs.judge import judge
from eval_jobs.records import SampleResult
from eval_jobs.tables import perf_frame, samples_frame
from eval_jobs.scoring import judge_frame


@pytest.fixture(scope="module")
def demo(data_dir: Path) -> EvalDataset:
    return load_dataset(DEMO_CONFIG, data_dir=data_dir)


def record(model: str, index: int, response: str, finish: str = "stop", reasoning: str | None = None,
           tokens: int = 100, reasoning_tokens: int | None = None) -> SampleResult:
    now = time.time()
    return SampleResult(model=model, dataset="demo_arith", index=index, repeat=0, status="ok", endpoint="x",
                        prompt=[{"role": "user", "content": "q"}], response=response, reasoning_content=reasoning,
                        finish_reason=finish, completion_tokens=tokens, reasoning_tokens=reasoning_tokens,
                        started_at=now, finished_at=now + 1, latency_s=1.0, ttft_s=0.1)


def test_an_answer_cut_inside_its_reasoning_is_not_scored_on_it(demo) -> None:
    ref = [str(r) for r in demo.references[:6]]
    boxed = [f"\\boxed{{{r}}}" for r in ref]
    records = [
        # No reasoning parser on the server: <think> opened, cut before </think>.
        record("inline", 0, f"<think>First try {boxed[0]}, let me check", finish="length"),
        # Finished reasoning: scored on what follows </think>, whatever the reasoning said.
        record("inline", 1, f"<think>maybe \\boxed{{99999}}</think> So {boxed[1]}"),
        # The chat template put <think> in the prompt: finished answers have only </think> ...
        record("template", 2, f"Let me think.</think> The answer is {boxed[2]}"),
        # ... and one cut before it has no tag at all: all of it is reasoning.
        record("template", 3, f"Hmm, perhaps {boxed[3]} but wait", finish="length"),
        # The server's reasoning parser split it: reasoning only, no answer, cut by the length limit.
        record("parser", 4, "", finish="length", reasoning=f"so {boxed[4]}?", reasoning_tokens=100),
        # A model that does not reason, cut by the length limit after its answer: scored as it is.
        record("plain", 5, f"{boxed[5]} and more", finish="length"),
    ]
    # Without the rule AISBench's own postprocessing would score the reasoning text of 0 and 3 as right.
    assert [v.correct for v in judge(demo, [records[0].response, records[3].response], [0, 3]).verdicts] == [True,
                                                                                                           True]
    frame = judge_frame(samples_frame(records), {"demo_arith": demo}).set_index("index").sort_index()
    assert frame["cut_in_reasoning"].tolist() == [True, False, False, True, True, False]
    assert frame["correct"].tolist() == [False, True, True, False, False, True]
    # Tokens: the engine's count where it gave one, else split by characters; they add up to the completion.
    assert frame.loc[4, "reasoning_tokens"] == 100 and frame.loc[4, "answer_tokens"] == 0
    assert frame.loc[0, "answer_tokens"] == 0 and frame.loc[5, "reasoning_tokens"] == 0
    assert 0 < frame.loc[1, "reasoning_tokens"] < 100
    assert (frame["reasoning_tokens"] + frame["answer_tokens"] == 100).all()

    perf = perf_frame(frame.reset_index()).set_index("model")
    assert perf.loc["template", "truncated_share"] == 0.5 and perf.loc["plain", "truncated_share"] == 1.0
    assert perf.loc["inline", "cut_in_reasoning"] == 1 and perf.loc["plain", "cut_in_reasoning"] == 0
    assert perf.loc["parser", "reasoning_tokens_p50"] == 100 and perf.loc["plain", "answer_tokens_p50"] == 100
