"""The run directory and its durable per-sample store.

    run = RunDir(Path("runs/demo")).create()
    store = SampleStore(run.samples_jsonl)
    plan = plan_resume(requests, store.latest())   # resume: send only what is new, changed or failed
    await store.append_async(results)               # durable (fsynced) before it returns
    current = matching(store.latest(), requests)    # the report: records made by this config only

`samples.jsonl` is append-only: one `SampleResult` JSON object per line. A crash mid-write leaves at most a
torn last line, which `load()` skips with a warning; a failed sample retried by a later resume, or one re-sent
because its fingerprint changed (eval_jobs/fingerprint.py), appends a newer record for the same key, which
supersedes the old one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from collections.abc import Sequence
from dataclasses import dataclass
from io import FileIO
from pathlib import Path

from pydantic import ValidationError

from eval_jobs.records import SampleKey, SampleRequest, SampleResult

logger = logging.getLogger(__name__)


class _InRunDir:
    """A file of the run directory, by its name: `run_dir.samples_jsonl` is `run_dir.root / "samples.jsonl"`."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, run: RunDir | None, owner: type | None = None) -> Path:
        return Path(self.name) if run is None else run.root / self.name


@dataclass(frozen=True)
class RunDir:
    """Names the files inside one run directory; the only place those names are spelled."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def create(self) -> RunDir:
        """Make the directory (and `plots/`) if missing; returns self for chaining."""
        self.plots_dir.mkdir(parents=True, exist_ok=True)
        return self

    samples_jsonl = _InRunDir("samples.jsonl")
    samples_parquet = _InRunDir("samples.parquet")
    summary_csv = _InRunDir("summary.csv")
    summary_md = _InRunDir("summary.md")
    summary_html = _InRunDir("summary.html")
    config_yaml = _InRunDir("config.yaml")
    versions_json = _InRunDir("versions.json")
    plots_dir = _InRunDir("plots")
    configs_dir = _InRunDir("configs")  # every config the directory was run with, one file per run
    runs_jsonl = _InRunDir("runs.jsonl")  # a line per run: when, which config, how many reused and sent


@dataclass(frozen=True)
class ResumePlan:
    """What a run sends, and why the rest is not sent again."""

    todo: list[SampleRequest]
    reused: int  # ok records with the same fingerprint: kept
    new: int  # no record yet
    changed: int  # a record, made by other inputs (config, data row, checkpoint): sent again
    failed: int  # the latest record failed: tried again

    def summary(self) -> str:
        return (f"{self.reused} samples reused (same fingerprint), {len(self.todo)} to send: {self.new} new, "
                f"{self.changed} changed since their record, {self.failed} failed before")


def plan_resume(requests: Sequence[SampleRequest], latest: dict[SampleKey, SampleResult]) -> ResumePlan:
    todo, reused, new, changed, failed = [], 0, 0, 0, 0
    for request in requests:
        record = latest.get(request.key)
        if record is None:
            new += 1
        elif record.fingerprint != request.fingerprint:
            changed += 1
        elif record.status != "ok":
            failed += 1
        else:
            reused += 1
            continue
        todo.append(request)
    return ResumePlan(todo, reused, new, changed, failed)


def matching(latest: dict[SampleKey, SampleResult], requests: Sequence[SampleRequest]) -> list[SampleResult]:
    """The latest record of each request made from the same inputs (fingerprint), in request order: what a report of
    this config may show. Records of other configs stay in the file, not in the report."""
    out = []
    for request in requests:
        record = latest.get(request.key)
        if record is not None and record.fingerprint == request.fingerprint:
            out.append(record)
    return out


class SampleStore:
    """Append-only JSON Lines store of `SampleResult`s; safe for one writer process (any threads or tasks)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # One lock serialises appends from threads (and from asyncio.to_thread): a record's bytes must never
        # interleave with another's, or both lines become unreadable.
        self._lock = threading.Lock()
        self._tail_checked = False

    def append(self, results: Iterable[SampleResult]) -> int:
        """Write whole lines, flush and fsync before returning: a sample counts only once it is durable.

        Returns the number of records written.
        """
        # Serialise first, so a record that fails to serialise cannot leave half a batch on disk.
        data = b"".join(r.model_dump_json().encode() + b"\n" for r in results)
        if not data:
            return 0
        with self._lock:
            created = not self.path.exists()
            if created:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            # Unbuffered binary append: every write lands at the end (O_APPEND); "+" lets the tail check read.
            with open(self.path, "ab+", buffering=0) as f:
                if not self._tail_checked:
                    self._terminate_torn_tail(f)
                    self._tail_checked = True
                view = memoryview(data)
                while view:  # a raw write may be partial
                    view = view[f.write(view) :]
                os.fsync(f.fileno())
            if created:
                _fsync_dir(self.path.parent)  # make the new file's directory entry durable too
        return data.count(b"\n")

    async def append_async(self, results: Iterable[SampleResult]) -> int:
        """`append` in a worker thread, so the fsync never blocks the event loop."""
        batch = list(results)  # materialise on the loop: generators may not be thread-safe
        return await asyncio.to_thread(self.append, batch)

    def iter_records(self) -> Iterator[SampleResult]:
        """Every readable record in file order, history included; corrupt or torn lines skipped (warning)."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                line = raw.strip()
                if not line:
                    continue
                try:
                    yield SampleResult.model_validate_json(line)
                except ValidationError as exc:
                    # Invalid JSON (a torn write) and valid JSON that isn't a record both land here. Resume
                    # must never fail on one bad line: the sample is simply not finished and is sent again.
                    torn = "" if raw.endswith(b"\n") else " (torn last line: crash mid-write?)"
                    logger.warning(
                        "%s:%d: skipping unreadable record%s: %s", self.path, lineno, torn, _first_error(exc)
                    )

    def load(self) -> list[SampleResult]:
        """One record per key, the latest in the file winning, ordered by each key's first appearance."""
        latest: dict[SampleKey, SampleResult] = {}
        for record in self.iter_records():
            latest[record.key] = record
        return list(latest.values())

    def latest(self) -> dict[SampleKey, SampleResult]:
        """Key → its latest record."""
        return {r.key: r for r in self.load()}

    def finished_keys(self) -> set[SampleKey]:
        """Keys whose latest record is ok. Failed keys are left out, so the next resume tries them again."""
        return {r.key for r in self.load() if r.status == "ok"}

    @staticmethod
    def _terminate_torn_tail(f: FileIO) -> None:
        """End a torn last line with a newline, so the next record starts on a line of its own.

        Without this, the first record appended after a crash would be glued onto the torn fragment and be
        lost too. The fragment stays in the file as one unreadable line, which readers skip.
        """
        fileno = f.fileno()
        size = os.fstat(fileno).st_size
        if size == 0:
            return
        if os.pread(fileno, 1, size - 1) != b"\n":
            f.write(b"\n")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return f"{loc}: {err['msg']}" if loc else err["msg"]
