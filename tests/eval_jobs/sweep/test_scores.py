"""Scoring checkpoint by checkpoint with AISBench's own evaluator (eval_jobs.sweep.scores): each checkpoint is judged
once, in the scorer's thread, into the summary rows `summarize` gives; an evaluator that raises fails that
checkpoint's dataset with its reason, and the other datasets and checkpoints are still scored."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from eval_jobs.datasets import load_datasets
from eval_jobs.records import SampleResult
from eval_jobs.evaluation import score
from eval_jobs.scoring import summarize
from eval_jobs.sweep.scheduler import EventLog
from eval_jobs.sweep.scores import CheckpointScorer
from shared import broken_config

DEMO = "demo_arith_gen_0_shot_chat_prompt"


def answers(data_dir: Path) -> list[str]:
    path = data_dir / "ais_bench/datasets/demo_arith/demo_arith.jsonl"
    return [json.loads(line)["answer"] for line in path.read_text().splitlines()]


def result(model: str, dataset: str, index: int, text: str) -> SampleResult:
    return SampleResult(model=model, dataset=dataset, index=index, repeat=0, status="ok", endpoint="test",
                        prompt=[{"role": "user", "content": "q"}], response=text, started_at=time.time())


def test_each_checkpoint_is_scored_once_and_a_failing_evaluator_fails_only_its_dataset(data_dir, tmp_path):
    good = load_datasets(DEMO, data_dir)[0]
    broken = load_datasets(broken_config(tmp_path), data_dir)[0]
    truth = answers(data_dir)
    # a: the first two of four right; b: all four right. Both also answered the broken dataset.
    records = {
        "a": [result("a", good.name, i, f"\\boxed{{{truth[i] if i < 2 else 999}}}") for i in range(4)],
        "b": [result("b", good.name, i, f"The answer is \\boxed{{{truth[i]}}}") for i in range(4)],
    }
    for name in records:
        records[name] += [result(name, broken.name, i, f"\\boxed{{{truth[i]}}}") for i in range(2)]
    events = EventLog(tmp_path / "events.jsonl")
    seen: list[tuple[str, pd.DataFrame]] = []
    scorer = CheckpointScorer({good.name: good, broken.name: broken}, None, events,
                              on_scored=lambda name, summary: seen.append((name, summary)))
    for name, recs in records.items():
        scorer.submit(name, recs)
    scorer.wait()

    # One call per checkpoint, in order, with exactly the rows summarize gives for that checkpoint's samples.
    both = {good.name: good, broken.name: broken}
    assert [name for name, _ in seen] == ["a", "b"]
    for name, summary in seen:
        pd.testing.assert_frame_equal(summary.reset_index(drop=True), summarize(score(records[name], both)))
    accuracy = {name: s.loc[(s["metric"] == "accuracy") & (s["dataset"] == good.name), "value"].item()
                for name, s in seen}
    assert accuracy == {"a": 0.5, "b": 1.0}
    # The broken dataset failed for each checkpoint with AISBench's own reason; nothing else failed.
    assert set(scorer.failed) == {"a", "b"}
    for name, summary in seen:
        assert list(scorer.failed[name]) == [broken.name]
        assert "options" in scorer.failed[name][broken.name]
        failed_row = summary[summary["dataset"] == broken.name]
        assert failed_row["metric"].tolist() == ["scoring failed"] and "options" in failed_row["error"].item()
    log = events.read()
    assert [e["checkpoint"] for e in log if e["event"] == "scored"] == ["a", "b"]  # once each
    assert sorted((e["checkpoint"], e["dataset"]) for e in log if e["event"] == "score-failed") == \
        [("a", broken.name), ("b", broken.name)]
    frame, summary = scorer.results()
    judged = frame[frame["dataset"] == good.name]
    assert judged["correct"].tolist() == [True, True, False, False, True, True, True, True]
    assert frame.loc[frame["dataset"] == broken.name, "correct"].isna().all()  # no verdicts where scoring failed
    assert summarize(frame).equals(summary.reset_index(drop=True))  # the kept rows are the whole run's summary
    assert sorted(summary["model"].unique()) == ["a", "b"]
