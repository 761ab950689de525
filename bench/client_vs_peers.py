"""Benchmark 2: a whole evaluation with evalcluster vs its peers, on one real engine, same bodies, same machine.

Peers, all sending the demo dataset's 50 requests (AISBench-rendered messages, max_tokens 64, temperature 0,
streamed) to one bare vLLM CPU server with SmolLM2:
  (a) minimal: one asyncio + httpx loop and nothing else; the engine-bound floor no client can beat,
  (b) evalcluster: `run_job` warm (Ray up, AISBench imported), one client actor, scoring and report included,
  (c) ais_bench: the CLI a user runs today, start-up, inference, scoring and summary included (at concurrency 8
      only, for run time).
The order changes between concurrencies so no peer always runs on a warmer or cooler engine.

    python -m bench.client_vs_peers [--quick]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (
    DATASET,
    LOG_DIR,
    QUICK,
    Result,
    local_ray,
    minimal_client,
    report,
    stop_group,
    vllm_server,
)
from cluster.paths import evalcluster_home
from eval_jobs.config import JobConfig
from eval_jobs.datasets import load_dataset
from eval_jobs.run import run_job

NAME = "smollm2"
MAX_TOKENS = 64
CONCURRENCIES = (8,) if QUICK else (1, 8, 16)
# ais_bench at one concurrency only: each CLI run costs ~40 s of its own start-up and task processes on top of
# the engine time, which at concurrency 1 is the longest of the three; c=8 keeps the whole run near 20 minutes.
AIS_BENCH_CONCURRENCIES = (8,)
LIMIT = 16 if QUICK else None  # None: all 50 rows
AIS_BENCH = Path(sys.executable).parent / "ais_bench"

# ais_bench's own vllm_api_general_chat, pointed at our server; model named so it skips its /v1/models lookup.
AIS_MODEL_CFG = """\
from ais_bench.benchmark.models import VLLMCustomAPIChat
from ais_bench.benchmark.utils.postprocess.model_postprocessors import extract_non_reasoning_content

models = [dict(attr="service", type=VLLMCustomAPIChat, abbr="bench-general-chat", path="", model={name!r},
               stream=True, request_rate=0, use_timestamp=False, retry=2, api_key="", host_ip="127.0.0.1",
               host_port={port}, url="", max_out_len={max_tokens}, batch_size={concurrency},
               trust_remote_code=False, generation_kwargs=dict(temperature=0),
               pred_postprocessor=dict(type=extract_non_reasoning_content))]
"""


def minimal(url: str, messages: list, concurrency: int) -> tuple[float, int]:
    # The exact bodies evalcluster's send_chat posts (streamed, usage requested).
    bodies = [{"model": NAME, "messages": m, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True,
               "stream_options": {"include_usage": True}} for m in messages]
    seconds, timings = minimal_client(url, bodies, concurrency)
    return seconds, sum(t.completion_tokens or 0 for t in timings)


def evalcluster(url: str, concurrency: int, out: Path, limit: int | None = LIMIT) -> tuple[float, float, int]:
    """(wall seconds of run_job, seconds from first request sent to last answer, completion tokens)."""
    job = JobConfig(eval={"endpoint": url, "models": [NAME], "datasets": [DATASET], "limit": limit, "clients": 1,
                          "concurrency": concurrency, "output": str(out),
                          "generation": {"max_out_len": MAX_TOKENS, "temperature": 0}})
    t0 = time.perf_counter()
    run_job(job)
    seconds = time.perf_counter() - t0
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    sending = max(r["finished_at"] for r in records) - min(r["started_at"] for r in records)
    return seconds, sending, sum(r.get("completion_tokens") or 0 for r in records)


def ais_bench(url: str, concurrency: int) -> float | None:
    """Wall seconds of one `ais_bench` CLI run, or None if it failed. Its configs, log and outputs are kept under
    the bench log dir (replaced by the next run) for a look at where its time went."""
    work = LOG_DIR / f"ais_bench-c{concurrency}"
    shutil.rmtree(work, ignore_errors=True)
    cfg_dir = work / "configs"
    (cfg_dir / "models").mkdir(parents=True)
    (cfg_dir / "datasets").mkdir()
    port = int(url.rsplit(":", 1)[1])
    (cfg_dir / "models" / "bench_general_chat.py").write_text(AIS_MODEL_CFG.format(
        name=NAME, port=port, max_tokens=MAX_TOKENS, concurrency=concurrency))
    # The same dataset config evalcluster renders from (it ships with the repo, not with AISBench).
    repo_cfg = Path(__file__).resolve().parents[1] / "configs" / "datasets" / f"{DATASET}.py"
    (cfg_dir / "datasets" / f"{DATASET}.py").symlink_to(repo_cfg)
    argv = [str(AIS_BENCH), "--models", "bench_general_chat", "--datasets", DATASET, "--config-dir", str(cfg_dir),
            "-w", str(work / "out")] + (["--num-prompts", str(LIMIT)] if LIMIT else [])
    env = {**os.environ, "AIS_BENCH_DATASETS_CACHE": str(evalcluster_home() / "datasets"), "NO_PROXY": "127.0.0.1"}
    t0 = time.perf_counter()
    # Its own process group: ais_bench runs its inference and evaluation tasks as child processes, which must not
    # outlive an interrupted benchmark.
    with open(work / "ais_bench.log", "wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work, start_new_session=True)
    try:
        code = proc.wait()
    finally:
        stop_group(proc)
    seconds = time.perf_counter() - t0
    # It can exit 0 with failed predictions: trust only a written summary.
    if code != 0 or not list((work / "out").glob("*/summary/summary_*.csv")):
        print(f"ais_bench failed (exit {code}); see {work / 'ais_bench.log'}")
        return None
    return seconds


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
            peers = ["minimal", "evalcluster"] + (["ais_bench"] if c in AIS_BENCH_CONCURRENCIES else [])
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
                else:
                    wall[peer] = ais_bench(url, c)
                    print(f"c={c} ais_bench    {wall[peer] or float('nan'):7.1f} s")
            note = f"{len(messages)} requests, c={c}"
            walls += [Result(bench, f"c={c} {peer} wall", wall[peer], "s", note=note) for peer in wall if wall[peer]]
            ratios.append(Result(bench, f"c={c} evalcluster/minimal", wall["evalcluster"] / wall["minimal"],
                                 target="<= 1.15", note=note))
            if wall.get("ais_bench"):
                ratios.append(Result(bench, f"c={c} evalcluster/ais_bench", wall["evalcluster"] / wall["ais_bench"],
                                     target="<= 0.6", note=note))
            elif "ais_bench" in wall:
                print(f"c={c}: no evalcluster/ais_bench ratio, ais_bench failed")
    report(walls + ratios)


if __name__ == "__main__":
    main()
