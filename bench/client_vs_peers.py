"""Benchmark 2: a whole evaluation with evalcluster vs its peers, on one real engine, same bodies, same machine.

Peers, all sending the demo dataset's 50 requests (AISBench-rendered messages, max_tokens 32, temperature 0,
streamed) to one bare vLLM CPU server with SmolLM2:
  (a) minimal: one asyncio + httpx loop and nothing else; the engine-bound floor no client can beat,
  (b) evalcluster: `run_job` warm (Ray up, AISBench imported), one client actor, scoring and report included;
      and cold at concurrency 8: `python -m eval_jobs.run CONFIG` as a user starts it, its own Ray start included,
  (c) ais_bench: the CLI a user runs today, start-up, inference, scoring and summary included (at concurrency 8
      only, for run time).
The order changes between concurrencies so no peer always runs on a warmer or cooler engine.

    python -m bench.client_vs_peers [--quick]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.ais_bench_cli import run_ais_bench
from bench.common import (
    DATASET,
    QUICK,
    Result,
    eval_body,
    local_ray,
    minimal_client,
    report,
    vllm_server,
)
from eval_jobs.config import JobConfig
from eval_jobs.datasets import load_dataset
from eval_jobs.evaluation import run_job

NAME = "smollm2"
MAX_TOKENS = 32  # with 64, concurrency 1 alone took 11 minutes here (both sides), over the whole bench's budget
CONCURRENCIES = (8,) if QUICK else (1, 8, 16)
# ais_bench and the cold evalcluster run at one concurrency only: each costs ~20-40 s of start-up on top of the
# engine time, which at concurrency 1 is the longest of the three; c=8 keeps this script near 6 minutes.
AIS_BENCH_CONCURRENCIES = (8,)
LIMIT = 16 if QUICK else None  # None: all 50 rows


def minimal(url: str, messages: list, concurrency: int) -> tuple[float, int]:
    # The exact bodies evalcluster's send_chat posts (streamed, usage requested).
    bodies = [{**eval_body(NAME, m, MAX_TOKENS, temperature=0), "stream": True,
               "stream_options": {"include_usage": True}} for m in messages]
    seconds, timings = minimal_client(url, bodies, concurrency)
    return seconds, sum(t.completion_tokens or 0 for t in timings)


def eval_section(url: str, concurrency: int, out: Path, limit: int | None = LIMIT) -> dict:
    """The job's `eval:` section: the demo dataset against `url` with one client actor."""
    return {"endpoint": url, "models": [NAME], "datasets": [DATASET], "limit": limit, "clients": 1,
            "concurrency": concurrency, "output": str(out), "generation": {"max_out_len": MAX_TOKENS, "temperature": 0}}


def evalcluster(url: str, concurrency: int, out: Path, limit: int | None = LIMIT) -> tuple[float, float, int]:
    """(wall seconds of run_job, seconds from first request sent to last answer, completion tokens)."""
    job = JobConfig(eval=eval_section(url, concurrency, out, limit))
    t0 = time.perf_counter()
    run_job(job)
    seconds = time.perf_counter() - t0
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    sending = max(r["finished_at"] for r in records) - min(r["started_at"] for r in records)
    return seconds, sending, sum(r.get("completion_tokens") or 0 for r in records)


def evalcluster_cold(url: str, concurrency: int, out: Path) -> float | None:
    """Wall seconds of `python -m eval_jobs.run CONFIG` in a new process (embedded Ray started and stopped,
    imports, scoring, report), or None if it failed."""
    config = out.with_suffix(".yaml")
    config.write_text(yaml.safe_dump({"cluster": {}, "eval": eval_section(url, concurrency, out)}))
    t0 = time.perf_counter()
    job = subprocess.run([sys.executable, "-m", "eval_jobs.run", str(config)], capture_output=True, text=True,
                         check=False)
    if job.returncode:
        print(f"cold evalcluster run failed (exit {job.returncode}):\n{job.stderr[-2000:]}")
        return None
    return time.perf_counter() - t0


def main() -> None:
    messages = load_dataset(DATASET).messages[:LIMIT]
    bench = "client_vs_peers"
    walls: list[Result] = []
    ratios: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp, local_ray(num_cpus=2), vllm_server(NAME) as url:
        tmp = Path(tmp)
        # Warm-up, untimed: engine, Ray workers, AISBench imports in this driver.
        minimal(url, messages[:4], 4)
        evalcluster(url, 2, tmp / "warm", limit=2)
        for i, c in enumerate(CONCURRENCIES):
            starts_from_nothing = ["ais_bench", "evalcluster cold"] if c in AIS_BENCH_CONCURRENCIES else []
            peers = ["minimal", "evalcluster", *starts_from_nothing]
            if i % 2:
                peers.reverse()
            wall: dict[str, float | None] = {}
            for peer in peers:
                if peer == "minimal":
                    wall[peer], tokens = minimal(url, messages, c)
                    print(f"c={c} minimal      {wall[peer]:7.1f} s  {tokens} completion tokens")
                elif peer == "evalcluster":
                    wall[peer], sending, tokens = evalcluster(url, c, tmp / f"eval-c{c}")
                    print(f"c={c} evalcluster  {wall[peer]:7.1f} s  ({sending:.1f} s sending)  {tokens} tokens")
                elif peer == "evalcluster cold":
                    wall[peer] = evalcluster_cold(url, c, tmp / f"cold-c{c}")
                    print(f"c={c} evalcluster cold {wall[peer] or float('nan'):7.1f} s")
                else:
                    wall[peer] = run_ais_bench(url, NAME, c, MAX_TOKENS, f"c{c}", num_prompts=LIMIT)
                    print(f"c={c} ais_bench    {wall[peer] or float('nan'):7.1f} s")
            note = f"{len(messages)} requests, c={c}"
            walls += [Result(bench, f"c={c} {peer} wall", wall[peer], "s", note=note) for peer in wall if wall[peer]]
            ratios.append(Result(bench, f"c={c} evalcluster/minimal", wall["evalcluster"] / wall["minimal"],
                                 target="<= 1.15", note=note))
            if wall.get("ais_bench"):
                ratios.append(Result(bench, f"c={c} evalcluster/ais_bench", wall["evalcluster"] / wall["ais_bench"],
                                     target="<= 0.6", note=note))
                if wall.get("evalcluster cold"):
                    ratios.append(Result(bench, f"c={c} evalcluster cold/ais_bench",
                                         wall["evalcluster cold"] / wall["ais_bench"], target="<= 0.6",
                                         note=note + ", both started from nothing"))
            elif "ais_bench" in wall:
                print(f"c={c}: no evalcluster/ais_bench ratio, ais_bench failed")
    report(walls + ratios)


if __name__ == "__main__":
    main()
