"""Scores where RL teams already look: scalars at each checkpoint's training step, in their experiment trackers.

    trackers = open_trackers(["tensorboard"], logdir, run_dir)
    trackers.log(table, steps={"step_400": 400})   # rows of eval_jobs.tables.summary_table
    trackers.close()

Each checkpoint's row becomes scalars `<dataset>/<metric>` (and `_ci_low` / `_ci_high`) plus `perf/<dataset>/…`
(TTFT and TPOT medians, output tokens/s, failures), written at the checkpoint's own step, so a checkpoint
evaluated late (a watched directory, a resumed sweep) lands where it belongs on the curve, beside the training
run's loss when `logdir` is that run's own TensorBoard directory. What was logged is remembered in the run
directory (`tracked.json`): a report written again, or a resumed run, does not log a checkpoint twice; one whose
numbers changed (more samples finished) is logged again at the same step.

TensorBoard's own event writer is always available; Weights & Biases and MLflow are used when asked for and
installed (their offline/file modes need no server).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

import pandas as pd

from cluster.errors import ConfigError

TrackerName = Literal["tensorboard", "wandb", "mlflow"]
PERF_SCALARS = {"ttft_p50_s": "ttft_p50_s", "tpot_p50_s": "tpot_p50_s", "output_tok_per_s": "output_tok_per_s",
                "failures": "failures"}
STEP_IN_NAME = re.compile(r"(?:step|checkpoint|ckpt|iter|global_step)[-_]?(\d+)$", re.IGNORECASE)


def step_of(model: str) -> int | None:
    """The training step a checkpoint's name says (`step_400`, `checkpoint-1200`, `global_step50`), else None."""
    match = STEP_IN_NAME.search(model.rstrip("/").rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


def scalars(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per model: {tag: value} from a summary table (metric rows, perf columns repeated on each)."""
    out: dict[str, dict[str, float]] = {}
    for row in table.to_dict("records"):
        tags = out.setdefault(str(row["model"]), {})
        dataset = str(row["dataset"])
        metric = row.get("metric")
        if isinstance(metric, str):
            for column, suffix in (("value", ""), ("ci_low", "_ci_low"), ("ci_high", "_ci_high")):
                _put(tags, f"{dataset}/{metric}{suffix}", row.get(column))
        for column, name in PERF_SCALARS.items():
            _put(tags, f"perf/{dataset}/{name}", row.get(column))
    return out


def _put(tags: dict[str, float], tag: str, value: Any) -> None:
    if value is not None and not (isinstance(value, float) and math.isnan(value)):
        tags[tag] = float(value)


class Tracker(Protocol):
    def log(self, model: str, step: int, values: Mapping[str, float]) -> None: ...
    def close(self) -> None: ...


class TensorBoardTracker:
    """One event file per run directory (TensorBoard's own writer); a run per checkpoint would scatter the
    curve, so the checkpoint is the step and the tag carries dataset and metric."""

    def __init__(self, logdir: Path) -> None:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        logdir.mkdir(parents=True, exist_ok=True)
        self._writer = EventFileWriter(str(logdir))

    def log(self, model: str, step: int, values: Mapping[str, float]) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=tag, simple_value=v) for tag, v in sorted(values.items())])
        self._writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))
        self._writer.flush()  # a sweep runs for hours: each checkpoint's point is visible at once

    def close(self) -> None:
        self._writer.close()


class WandbTracker:
    """Offline unless WANDB_MODE says otherwise. Steps may arrive out of order (a late checkpoint), which
    wandb's own step refuses, so the training step is a metric every other metric is plotted against."""

    def __init__(self, logdir: Path, project: str) -> None:
        import wandb

        logdir.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(project=project, dir=str(logdir), mode=None if _wandb_mode_set() else "offline")
        self._run.define_metric("train/step")
        self._run.define_metric("*", step_metric="train/step")

    def log(self, model: str, step: int, values: Mapping[str, float]) -> None:
        self._run.log({"train/step": step, **values})

    def close(self) -> None:
        self._run.finish()


class MlflowTracker:
    """A file store under `logdir` unless MLFLOW_TRACKING_URI names a server."""

    def __init__(self, logdir: Path, project: str) -> None:
        import mlflow

        if not os.environ.get("MLFLOW_TRACKING_URI"):
            mlflow.set_tracking_uri((logdir / "mlruns").resolve().as_uri())
        mlflow.set_experiment(project)
        self._mlflow = mlflow
        self._run = mlflow.start_run()

    def log(self, model: str, step: int, values: Mapping[str, float]) -> None:
        self._mlflow.log_metrics({_mlflow_key(k): v for k, v in values.items()}, step=step)

    def close(self) -> None:
        self._mlflow.end_run()


def _mlflow_key(tag: str) -> str:
    return re.sub(r"[^\w\-./ ]", "_", tag)  # MLflow allows only these characters in metric names


def _wandb_mode_set() -> bool:
    return bool(os.environ.get("WANDB_MODE"))


class Trackers:
    """The trackers of one run, and the record of what they were given."""

    def __init__(self, trackers: list[Tracker], ledger: Path) -> None:
        self._trackers = trackers
        self._ledger = ledger
        self._logged: dict[str, str] = json.loads(ledger.read_text()) if ledger.exists() else {}

    def log(self, table: pd.DataFrame, steps: Mapping[str, int | None]) -> list[str]:
        """Log every checkpoint of `table` not logged with these numbers yet; returns the ones logged."""
        if not self._trackers or table.empty:
            return []
        logged = []
        for model, values in scalars(table).items():
            step = steps.get(model)
            step = step if step is not None else step_of(model)
            digest = hashlib.sha256(json.dumps([step, sorted(values.items())]).encode()).hexdigest()[:16]
            if not values or self._logged.get(model) == digest:
                continue
            for tracker in self._trackers:
                tracker.log(model, step or 0, values)
            self._logged[model] = digest
            logged.append(model)
        if logged:
            tmp = self._ledger.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._logged, indent=1, sort_keys=True))
            tmp.replace(self._ledger)
        return logged

    def close(self) -> None:
        for tracker in self._trackers:
            tracker.close()


def check_installed(names: Iterable[TrackerName]) -> None:
    """Fail before anything starts when a tracker asked for is not installed."""
    packages = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
    for name in names:
        if importlib.util.find_spec(packages[name]) is None:
            raise ConfigError(f"trackers: {name!r} needs the Python package {packages[name]!r}, which is not "
                              f"installed (pip install {packages[name]})")


def open_trackers(names: Iterable[TrackerName], logdir: Path, run_dir: Path, project: str = "evalcluster") -> Trackers:
    names = list(dict.fromkeys(names))
    check_installed(names)
    made: list[Tracker] = []
    for name in names:
        if name == "tensorboard":
            made.append(TensorBoardTracker(logdir))
        elif name == "wandb":
            made.append(WandbTracker(logdir, project))
        else:
            made.append(MlflowTracker(logdir, project))
    return Trackers(made, run_dir / "tracked.json")
