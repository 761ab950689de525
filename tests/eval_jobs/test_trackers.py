"""Learning curves in TensorBoard: scalars at each checkpoint's step, read back with TensorBoard's own reader."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cluster.errors import ConfigError
from eval_jobs.tables import perf_frame, summary_table
from eval_jobs.scoring import summarize
from eval_jobs.trackers import check_installed, open_trackers, step_of


def samples(model: str, right: int, total: int = 4) -> pd.DataFrame:
    return pd.DataFrame({
        "model": model, "dataset": "demo", "index": range(total), "repeat": 0, "status": "ok",
        "correct": [i < right for i in range(total)], "extracted": "", "ttft_s": 0.1, "latency_s": 1.0,
        "completion_tokens": 10, "started_at": 100.0, "finished_at": 101.0,
    })


def table_of(*frames: pd.DataFrame) -> pd.DataFrame:
    frame = pd.concat(frames, ignore_index=True)
    return summary_table(summarize(frame), perf_frame(frame))


def read(logdir: Path) -> EventAccumulator:
    events = EventAccumulator(str(logdir))
    events.Reload()
    return events


def test_each_checkpoint_lands_at_its_step_once_and_again_when_its_numbers_change(tmp_path):
    table = table_of(samples("step_300", 3), samples("step_100", 1))
    trackers = open_trackers(["tensorboard"], tmp_path / "tb", tmp_path)
    # step_300 comes first (evaluated first, or late in watch mode): it still lands at step 300.
    assert trackers.log(table[table.model == "step_300"], steps={"step_300": 300}) == ["step_300"]
    assert trackers.log(table, steps={"step_300": 300}) == ["step_100"]  # its step from its name
    assert trackers.log(table, steps={"step_300": 300}) == []  # a report written again logs nothing twice
    trackers.close()

    events = read(tmp_path / "tb")
    accuracy = {e.step: e.value for e in events.Scalars("demo/accuracy")}
    expected = {int(m.removeprefix("step_")): v for m, v in
                table[table.metric == "accuracy"].set_index("model")["value"].items()}
    assert accuracy == pytest.approx(expected) and sorted(accuracy) == [100, 300]
    low = {e.step: e.value for e in events.Scalars("demo/accuracy_ci_low")}
    assert low[300] == pytest.approx(table.query("model == 'step_300' and metric == 'accuracy'")["ci_low"].item())
    assert {e.step for e in events.Scalars("perf/demo/ttft_p50_s")} == {100, 300}

    # A resumed run with more answers in: the same step again, with the new value; nothing else.
    resumed = open_trackers(["tensorboard"], tmp_path / "tb", tmp_path)
    assert resumed.log(table_of(samples("step_300", 4), samples("step_100", 1)), steps={"step_300": 300}) == \
        ["step_300"]
    resumed.close()
    last = [e for e in read(tmp_path / "tb").Scalars("demo/accuracy") if e.step == 300][-1]
    assert last.value == 1.0


def test_step_from_a_checkpoint_name() -> None:
    assert step_of("step_400") == 400 and step_of("/ckpt/grpo/checkpoint-1200") == 1200
    assert step_of("global_step50") == 50 and step_of("tiny-a") is None


def test_a_tracker_that_is_not_installed_is_refused_up_front() -> None:
    pytest.importorskip("tensorboard")
    try:
        import wandb  # noqa: F401
        pytest.skip("wandb is installed here")
    except ImportError:
        pass
    with pytest.raises(ConfigError, match="'wandb' needs the Python package 'wandb'"):
        check_installed(["tensorboard", "wandb"])


def test_sweep_curves_in_tensorboard_match_sweep_csv(tmp_path):
    from eval_jobs.store import RunDir
    from eval_jobs.sweep.report import checkpoint_order, write_sweep_report

    frame = pd.concat([samples("step_200", 3), samples("step_50", 1), samples("step_100", 2)], ignore_index=True)
    summary = summarize(frame)
    steps = {"step_50": 50, "step_100": 100, "step_200": 200}
    sweep_dir = RunDir(tmp_path / "sweep").create()
    write_sweep_report(sweep_dir, frame, summary, checkpoint_order(sorted(steps.items(), key=lambda kv: kv[1])))
    trackers = open_trackers(["tensorboard"], tmp_path / "sweep" / "tensorboard", sweep_dir.root)
    trackers.log(summary_table(summary, perf_frame(frame)), steps=steps)
    trackers.close()

    curve = pd.read_csv(tmp_path / "sweep" / "sweep.csv")
    events = read(tmp_path / "sweep" / "tensorboard")
    for column, suffix in (("value", ""), ("ci_low", "_ci_low"), ("ci_high", "_ci_high")):
        logged = {e.step: e.value for e in events.Scalars(f"demo/accuracy{suffix}")}
        expected = dict(zip(curve["step"], curve[column]))
        assert logged == pytest.approx(expected), column
