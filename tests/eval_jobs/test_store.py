"""The per-sample store: durable appends, resume-safe reads of torn or corrupt files, latest record wins."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import pytest

from eval_jobs.records import SampleKey, SampleResult
from eval_jobs.store import RunDir, SampleStore


def result(index: int, *, status: str = "ok", repeat: int = 0, response: str = "42") -> SampleResult:
    return SampleResult(
        model="m",
        dataset="d",
        index=index,
        repeat=repeat,
        status=status,  # type: ignore[arg-type]
        error=None if status == "ok" else "HTTP 500: boom",
        endpoint="http://127.0.0.1:1",
        prompt=[{"role": "user", "content": f"question {index}\nwith a newline and ünïcode"}],
        response=response if status == "ok" else "",
        completion_tokens=3,
        started_at=1000.0 + index,
    )


def test_append_then_reload(tmp_path: Path) -> None:
    store = SampleStore(tmp_path / "run" / "samples.jsonl")  # parent directory created on first append
    assert store.load() == []
    assert store.append([result(0), result(1)]) == 2
    assert store.append([]) == 0
    store.append([result(2, repeat=1)])

    again = SampleStore(store.path)  # a fresh process reading the file
    assert again.load() == [result(0), result(1), result(2, repeat=1)]
    keys = {SampleKey("m", "d", 0, 0), SampleKey("m", "d", 1, 0), SampleKey("m", "d", 2, 1)}
    assert again.finished_keys() == keys
    # One record per line, newlines inside strings escaped.
    assert len(store.path.read_bytes().splitlines()) == 3


def test_torn_last_line_is_skipped_and_appending_continues(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "samples.jsonl"
    SampleStore(path).append([result(0), result(1)])
    # Crash mid-write: cut the second record in half.
    data = path.read_bytes()
    first_end = data.index(b"\n") + 1
    path.write_bytes(data[: first_end + (len(data) - first_end) // 2])

    with caplog.at_level(logging.WARNING, logger="eval_jobs.store"):
        store = SampleStore(path)
        assert store.load() == [result(0)]
    assert "torn last line" in caplog.text
    assert store.finished_keys() == {SampleKey("m", "d", 0, 0)}

    # Resume re-sends sample 1; its record must not be glued onto the torn fragment.
    store.append([result(1)])
    assert SampleStore(path).load() == [result(0), result(1)]


def test_corrupt_lines_anywhere_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "samples.jsonl"
    good = [result(i).model_dump_json().encode() for i in range(3)]
    lines = [
        good[0],
        b"{not json at all",
        b'{"model": "m", "dataset": "d"}',  # valid JSON, not a record
        b"",
        good[1],
        b"\xff\xfe\x00 binary garbage",
        good[2],
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    with caplog.at_level(logging.WARNING, logger="eval_jobs.store"):
        loaded = SampleStore(path).load()
    assert loaded == [result(0), result(1), result(2)]
    assert caplog.text.count("skipping unreadable record") == 3
    assert ":2:" in caplog.text and ":3:" in caplog.text


def test_later_records_supersede_earlier_ones(tmp_path: Path) -> None:
    store = SampleStore(tmp_path / "samples.jsonl")
    store.append([result(0, status="failed"), result(1), result(2, status="failed")])
    assert store.finished_keys() == {SampleKey("m", "d", 1, 0)}

    # The next resume retries the failed keys: 0 succeeds, 2 fails again.
    store.append([result(0, response="7"), result(2, status="failed")])
    latest = {r.key: r for r in store.load()}
    assert len(latest) == 3 and len(store.load()) == 3
    assert latest[SampleKey("m", "d", 0, 0)].status == "ok"
    assert latest[SampleKey("m", "d", 0, 0)].response == "7"
    assert latest[SampleKey("m", "d", 2, 0)].status == "failed"
    assert store.finished_keys() == {SampleKey("m", "d", 0, 0), SampleKey("m", "d", 1, 0)}
    assert len(list(store.iter_records())) == 5  # the history stays in the file


def test_concurrent_appends_from_threads_and_tasks_stay_whole(tmp_path: Path) -> None:
    store = SampleStore(tmp_path / "samples.jsonl")

    def writer(offset: int) -> None:
        for i in range(20):
            store.append([result(offset + i, response="x" * 5000)])

    threads = [threading.Thread(target=writer, args=(n * 100,)) for n in range(4)]
    for t in threads:
        t.start()

    async def tasks() -> None:
        await asyncio.gather(*(store.append_async([result(1000 + i)]) for i in range(20)))

    asyncio.run(tasks())
    for t in threads:
        t.join()
    keys = {r.index for r in store.load()}
    assert keys == {n * 100 + i for n in range(4) for i in range(20)} | {1000 + i for i in range(20)}
    assert len(list(store.iter_records())) == 100  # no line was lost or split


def test_run_dir_names_its_files(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "runs" / "demo").create()
    assert run.plots_dir.is_dir()
    names = [p.name for p in (run.samples_jsonl, run.samples_parquet, run.summary_csv, run.summary_md,
                              run.summary_html, run.config_yaml, run.versions_json)]
    assert names == ["samples.jsonl", "samples.parquet", "summary.csv", "summary.md", "summary.html",
                     "config.yaml", "versions.json"]
    assert RunDir(str(tmp_path)).root == tmp_path  # accepts str
