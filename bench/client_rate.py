"""Benchmark 3: how many requests per second evalcluster's client actors sustain when the engine costs nothing.

Against the simulated engine with zero latency and 4-token answers, the time a request takes is client-side work
(leasing, streaming, parsing, reporting back through Ray) plus the simulator's own HTTP handling. The peer is a
single-process asyncio + httpx loop sending the same bodies to the same simulator with as many requests in
flight, so the simulator's cost is shared and the ratio is about the clients.

    python -m bench.client_rate [--quick]
"""

from __future__ import annotations

import time

from bench.common import QUICK, Result, local_ray, minimal_client, report, sim_server
from eval_jobs.records import SampleKey, SampleRequest
from eval_jobs.work import ClientSettings, distribute

REQUESTS = 200 if QUICK else 2000
CLIENTS, CONCURRENCY, LEASE = 2, 16, 4  # evalcluster's defaults (eval.clients, concurrency, lease_size)
# Measured by facts.md against an instant server (a 5 ms gap between dispatches), not in this run.
AIS_BENCH_QUOTED = 117.5


def body(i: int) -> dict:
    return {"model": "sim", "messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 4}


def evalcluster_rate(url: str, n: int) -> tuple[float, float, int]:
    """(requests/s over the whole distribute call, actor start-up included; requests/s from the first request
    sent to the last answer, i.e. once the actors run; failed samples)."""
    requests = [SampleRequest(key=SampleKey("sim", "bench", i, 0), endpoint=url, body=body(i)) for i in range(n)]
    settings = ClientSettings(concurrency=CONCURRENCY, lease_size=LEASE, timeout_s=60, max_retries=0, backoff_s=0)
    results = []
    t0 = time.perf_counter()
    distribute(requests, settings, CLIENTS, results.extend)
    seconds = time.perf_counter() - t0
    sending = max(r.finished_at for r in results) - min(r.started_at for r in results)
    return n / seconds, n / sending, sum(r.status != "ok" for r in results)


def minimal_rate(url: str, n: int) -> float:
    bodies = [{**body(i), "stream": True, "stream_options": {"include_usage": True}} for i in range(n)]
    seconds, _ = minimal_client(url, bodies, CLIENTS * CONCURRENCY)
    return n / seconds


def main() -> None:
    bench = "client_rate"
    with local_ray(num_cpus=2), sim_server("sim") as url:
        evalcluster_rate(url, 100)  # warm-up: Ray's worker pool, imports in the actors
        minimal_rate(url, 100)
        # Minimal on both sides of evalcluster: the simulator shares 2 cores with everything, so it drifts.
        before = minimal_rate(url, REQUESTS)
        rate, steady, failed = evalcluster_rate(url, REQUESTS)
        after = minimal_rate(url, REQUESTS)
    minimal = (before + after) / 2
    print(f"minimal {before:.0f} / {after:.0f} req/s, evalcluster {rate:.0f} req/s "
          f"({steady:.0f} once its actors run; {failed} failed)")
    note = f"{REQUESTS} requests, {CLIENTS} clients x {CONCURRENCY} in flight"
    report([
        Result(bench, "minimal single-process rate", minimal, "req/s",
               note=f"{REQUESTS} requests, {CLIENTS * CONCURRENCY} in flight, before/after average"),
        Result(bench, "evalcluster rate", rate, "req/s", note=note + (f", {failed} FAILED" if failed else "")),
        Result(bench, "evalcluster rate once actors run", steady, "req/s", note="first request sent to last answer"),
        Result(bench, "evalcluster/minimal once actors run", steady / minimal),
        Result(bench, "evalcluster/ais_bench (quoted)", rate / AIS_BENCH_QUOTED,
               note=f"ais_bench ~{AIS_BENCH_QUOTED:.0f} req/s per process, quoted from facts.md, not measured"),
        Result(bench, "evalcluster/minimal", rate / minimal, note=note),
    ])


if __name__ == "__main__":
    main()
