"""Scoring a sweep checkpoint by checkpoint, as each one's samples are done, off the scheduler's loop.

    scorer = CheckpointScorer(datasets, ks=[1], events=events, on_scored=hook)
    scorer.submit("step_400", records)      # returns at once; one background thread scores it
    scorer.wait()                           # every submitted checkpoint scored
    frame, summary = scorer.results()       # all scored samples and summary rows so far

The scheduler hands a checkpoint over when it retires (or, on resume, when its samples were all done before the
start), so AISBench judges each sample once per run instead of re-judging the whole store at every retirement,
and the loop goes straight back to deploying. `score_checkpoint` is the one place a checkpoint's summary rows
(model × dataset × metric, `eval_jobs.scoring.summarize`) come into being; `on_scored(name, summary)` is called
there, in the scoring thread, once per checkpoint (trackers hook in here; `summary` is empty for simulated engines
or when no dataset could be scored). An `on_scored` that raises is logged; scoring goes on.

An evaluator that raises fails that checkpoint's dataset, with its reason (`failed`, a `score-failed` event and a
"scoring failed" summary row): the checkpoint's other datasets are scored and the sweep goes on.

The thread is a daemon: a sweep stopped with Ctrl-C does not wait for AISBench to finish; the samples are in the
store, and the rerun scores them.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from eval_jobs.datasets import EvalDataset
from eval_jobs.records import SampleResult
from eval_jobs.tables import samples_frame
from eval_jobs.evaluation import score
from eval_jobs.llm_judge import judge_dataset_name
from eval_jobs.scoring import EVALUATOR_METRICS, SCORING_ERRORS, summarize

log = logging.getLogger("evalcluster.sweep")

OnScored = Callable[[str, pd.DataFrame], None]


class CheckpointScorer:
    """One background thread that scores checkpoints in the order they are submitted, each once."""

    def __init__(self, datasets: Mapping[str, EvalDataset], ks: Sequence[int] | None, events: Any,
                 simulated: bool = False, on_scored: OnScored | None = None) -> None:
        self.datasets = dict(datasets)
        self.ks = ks
        self.events = events  # scheduler.EventLog
        self.simulated = simulated  # simulated engines: samples are kept for the perf report, never judged
        self.on_scored = on_scored
        # The judge stages' samples (`<abbr>-judge`) score their dataset's answers; they are not datasets themselves.
        self._judge_stages = {judge_dataset_name(d) for d in self.datasets.values() if d.llm_judge is not None}
        self.failed: dict[str, dict[str, str]] = {}  # checkpoint → dataset → why it could not be scored
        self._frames: dict[str, pd.DataFrame] = {}  # checkpoint → its per-sample frame (with verdicts)
        self._summaries: dict[str, pd.DataFrame] = {}
        self._lock = threading.Lock()
        self._todo: queue.Queue[tuple[str, list[SampleResult]] | None] = queue.Queue()
        self._pending = 0
        self._idle = threading.Condition(self._lock)
        self._thread = threading.Thread(target=self._work, name="sweep-scoring", daemon=True)
        self._thread.start()

    def submit(self, name: str, records: Sequence[SampleResult]) -> None:
        """Score `name` from `records` (its samples) in the background; returns at once."""
        with self._lock:
            self._pending += 1
        self._todo.put((name, list(records)))

    def wait(self) -> None:
        """Until every submitted checkpoint is scored."""
        with self._idle:
            self._idle.wait_for(lambda: self._pending == 0)

    def close(self) -> None:
        """Let the thread end once the queue is empty (it is a daemon: nothing waits for it)."""
        self._todo.put(None)

    def results(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(per-sample frame, summary rows) of every checkpoint scored so far."""
        with self._lock:
            frames, summaries = list(self._frames.values()), list(self._summaries.values())
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        # What judge_frame leaves in attrs, per checkpoint: concat keeps attrs only where all frames agree.
        for key in (EVALUATOR_METRICS, SCORING_ERRORS):
            frame.attrs[key] = [row for f in frames for row in f.attrs.get(key, [])]
        summary = pd.concat(summaries, ignore_index=True) if summaries else pd.DataFrame()
        return frame, summary

    def scored(self) -> list[str]:
        with self._lock:
            return list(self._frames)

    def _work(self) -> None:
        while (item := self._todo.get()) is not None:
            name, records = item
            try:
                self.score_checkpoint(name, records)
            except Exception as exc:  # never lose the thread: the next checkpoints still get scored
                log.exception("%s: scoring failed", name)
                self._fail(name, "*", exc)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def score_checkpoint(self, name: str, records: Sequence[SampleResult]) -> pd.DataFrame:
        """Judge one checkpoint's samples (each dataset on its own, `eval_jobs.evaluation.score`) and reduce them to its
        summary rows; the summary is kept for the report and handed to `on_scored`. Returns the summary (empty when
        simulated)."""
        t0 = time.monotonic()
        if self.simulated:
            frame, summary = samples_frame(records), pd.DataFrame()
        else:
            judge_records = [r for r in records if r.dataset in self._judge_stages]
            frame = score([r for r in records if r.dataset not in self._judge_stages], self.datasets, judge_records)
            summary = summarize(frame, self.ks) if not frame.empty else pd.DataFrame()
            for failure in frame.attrs.get(SCORING_ERRORS, []):
                self._fail(name, failure["dataset"], failure["error"])
        with self._lock:
            self._frames[name], self._summaries[name] = frame, summary
        self.events.write("scored", name, samples=len(records), scoring_s=round(time.monotonic() - t0, 3))
        if self.on_scored is not None:
            try:
                self.on_scored(name, summary)
            except Exception:  # a report or tracker problem must not fail the checkpoint's scores
                log.exception("%s: on_scored failed", name)
        return summary

    def _fail(self, name: str, dataset: str, exc: BaseException) -> None:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        with self._lock:
            self.failed.setdefault(name, {})[dataset] = reason
        self.events.write("score-failed", name, dataset=dataset, reason=reason)
        log.error("%s / %s: could not be scored: %s", name, dataset, reason)
