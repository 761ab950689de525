"""`python -m eval_jobs.sweep CONFIG.yaml [--watch DIR]`: evaluate many checkpoints, the same locally and under
`ray job submit`.

config → checkpoints (discover, convert) → cluster (connect) → serve (the shared endpoint; checkpoints deployed
and retired by the scheduler) → eval (per checkpoint, queue + client actors, one durable store for the sweep) →
report (per-checkpoint summary plus the sweep's curve, comparisons and learning curves). Each checkpoint is scored
once, when its samples are done, in a thread of its own (`scores.py`); the report is rewritten from those scores.
Running again on the same output directory resumes: finished checkpoints are not deployed again, finished samples
never re-sent. Ctrl-C or SIGTERM stops within seconds (deployments retired, finished samples kept).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cluster.connection import ray_session
from cluster.errors import ConfigError, run_command
from eval_jobs.datasets import EvalDataset, load_datasets
from eval_jobs.report import print_summary, write_config, write_report
from eval_jobs.provenance import library_versions, provenance
from eval_jobs.evaluation import build_requests, check_judge, output_dir, tracker_logdir, with_references
from eval_jobs.trackers import check_installed, open_trackers
from eval_jobs.viewer import write_viewer
from eval_jobs.store import RunDir, SampleStore
from eval_jobs.sweep.checkpoints import Watcher, discover
from eval_jobs.sweep.config import SweepJobConfig, load_sweep_config
from eval_jobs.sweep.report import checkpoint_order, print_sweep, write_sweep_report
from eval_jobs.sweep.scheduler import EventLog, Sweep
from eval_jobs.sweep.scores import CheckpointScorer, OnScored

log = logging.getLogger("evalcluster.sweep")


@dataclass
class SweepResult:
    table: pd.DataFrame  # the checkpoint × dataset table (simulated: the performance table)
    failed: dict[str, str] = field(default_factory=dict)  # checkpoint → why it could not be evaluated
    failed_samples: int = 0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or self.failed_samples else 0


def run_sweep(job: SweepJobConfig, on_scored: OnScored | None = None) -> SweepResult:
    """Run (or resume) a sweep; returns once every checkpoint is evaluated and scored (with `sweep.watch`: once
    idle). `on_scored(checkpoint, summary_rows)` is called once per checkpoint as its scores are known."""
    if job.serve.api_key and not job.eval.api_key:
        job = job.model_copy(update={"eval": job.eval.model_copy(update={"api_key": job.serve.api_key})})
    tracker_names = job.sweep.trackers if job.sweep.trackers is not None else job.eval.trackers
    check_installed(tracker_names)  # before anything starts
    datasets = {ds.name: ds for name in job.eval.datasets for ds in load_datasets(name, job.eval.data_dir,
                                                                                   job.eval.aisbench_model)}
    check_judge(job.eval, datasets)
    judged = [ds.config_name for ds in datasets.values() if ds.llm_judge is not None]
    if judged and not job.eval.judge.endpoint:  # the sweep's endpoint serves only the checkpoints it sweeps
        raise ConfigError(f"eval.judge.endpoint: {judged} have an LLM judge (judge_infer_cfg), and in a sweep the "
                          f"judge ({job.eval.judge.model!r}) is served elsewhere: set eval.judge.endpoint to the "
                          "server that serves it (e.g. an `evalcluster serve` of the judge checkpoint)")
    checkpoints = discover(job.sweep)  # bad paths, globs and names fail here, before anything starts
    mindrlhf = next((s for s in job.sweep.checkpoints if s.mindrlhf), None)
    watcher = (Watcher(Path(job.sweep.watch).expanduser(), job.sweep.settle_s,
                       strategy=Path(mindrlhf.strategy) if mindrlhf else None) if job.sweep.watch else None)
    sweep_dir = RunDir(output_dir(job.eval.output)).create()
    write_config(sweep_dir, job)
    store = SampleStore(sweep_dir.samples_jsonl)
    events = EventLog(sweep_dir.root / "events.jsonl")
    simulated = job.serve.engine.kind == "sim"

    trackers = open_trackers(tracker_names, tracker_logdir(job.sweep.logdir or job.eval.logdir, sweep_dir),
                             sweep_dir.root)

    def scored(name: str, summary: pd.DataFrame) -> None:
        # In the scoring thread: the report follows the sweep as it goes (from kept scores: pandas, no judging),
        # and each checkpoint reaches the trackers at its training step once, when all its samples are in.
        # A copy: the scheduler adds checkpoints (watch) while this thread reads them.
        checkpoints = dict(sweep.checkpoints)
        table, _ = write_reports(sweep_dir, job, scorer, datasets, checkpoints, dict(sweep.sources), simulated)
        if not table.empty:  # the report's rows: scores with their perf columns
            trackers.log(table[table["model"] == name], steps=checkpoints)
        if on_scored is not None and not summary.empty:
            on_scored(name, summary)

    scorer = CheckpointScorer(datasets, job.eval.k, events, simulated=simulated, on_scored=scored)

    with contextlib.closing(trackers):
        with ray_session(job.cluster):
            from serve_apps.endpoint import Endpoint

            endpoint = Endpoint(job.serve).start()
            sweep = Sweep(job, endpoint, list(datasets.values()), store, events, scorer)
            sweep.run(checkpoints, watcher)
        scorer.wait()
        scorer.close()
    summary, table = write_reports(sweep_dir, job, scorer, datasets, sweep.checkpoints, sweep.sources, simulated)
    if not summary.empty:
        print_summary(summary, simulated=simulated)
    if table is not None:
        print_sweep(table)
    print(f"sweep report: {(sweep_dir.root / ('summary.html' if simulated else 'sweep.html')).resolve()}")
    failed = dict(sweep.failed)
    for name, datasets_failed in scorer.failed.items():
        for dataset, reason in datasets_failed.items():
            failed[f"{name} / {dataset}"] = f"not scored: {reason}"
            print(f"{name} / {dataset}: not scored: {reason}", file=sys.stderr)
    records = [r for name in sweep.checkpoints for r in sweep.records_of(name)]
    return SweepResult(summary if table is None else table, failed, sum(r.status != "ok" for r in records))


def write_reports(sweep_dir: RunDir, job: SweepJobConfig, scorer: CheckpointScorer, datasets: dict[str, EvalDataset],
                  checkpoints: dict[str, int | None], sources: dict[str, str],
                  simulated: bool) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The per-checkpoint summary (summary.*), the sample viewer (samples.html) and, unless simulated, the sweep's
    own pages (sweep.*), from the scorer's per-checkpoint results (nothing is judged again here); returns (summary
    table, checkpoint table or None)."""
    frame, summary = scorer.results()
    if frame.empty:
        return pd.DataFrame(), None
    frame = frame[frame["model"].isin(list(checkpoints))].reset_index(drop=True)
    origin = provenance(build_requests(job.eval, {n: "" for n in checkpoints}, list(datasets.values())),
                        {n: {"path": sources.get(n), "step": step} for n, step in checkpoints.items()},
                        {n: d.config_name for n, d in datasets.items()}, library_versions())
    write_viewer(sweep_dir, with_references(frame, datasets), origin,
                 title="evalcluster sweep samples" + (" (SIMULATED ENGINE: not model outputs)" if simulated else ""))
    if simulated:
        return write_report(sweep_dir, frame, None, simulated=True, config=job, origin=origin,
                            title="evalcluster sweep (simulated engines)"), None
    if summary.empty:
        return write_report(sweep_dir, frame, None, config=job, origin=origin,
                            title="evalcluster sweep: per checkpoint"), None
    summary = summary[summary["model"].isin(list(checkpoints))].reset_index(drop=True)
    table = write_report(sweep_dir, frame, summary, config=job, origin=origin,
                         title="evalcluster sweep: per checkpoint")
    order = checkpoint_order(sorted(checkpoints.items(), key=lambda kv: (kv[1] is None, kv[1] or 0, kv[0])))
    return table, write_sweep_report(sweep_dir, frame, summary, order, note=job.sweep.note, origin=origin)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval_jobs.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="sweep YAML with cluster:, serve:, eval: and sweep: sections")
    parser.add_argument("--watch", metavar="DIR", help="keep evaluating new checkpoints written to DIR")
    parser.add_argument("--output", help="sweep directory (overrides eval.output)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    overrides = {"eval": {"output": args.output} if args.output else {},
                 "sweep": {"watch": args.watch} if args.watch else {}}
    return run_command(lambda: run_sweep(load_sweep_config(args.config, overrides)).exit_code)
