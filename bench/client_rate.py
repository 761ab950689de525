"""Benchmark 3: how many requests per second evalcluster's client actors sustain when the engine costs nothing.

Against the simulated engine with zero latency and 4-token answers, the time a request takes is client-side work
(leasing, streaming, parsing, reporting back through Ray) plus the simulator's own HTTP handling. Peers on the same
simulator: a single-process asyncio + httpx loop sending the same bodies with as many requests in flight (so the
simulator's cost is shared and the ratio is about the clients), and the `ais_bench` CLI with as many in flight on
the demo dataset's prompts repeated to the same count. The sustained rate of evalcluster and of ais_bench is
measured the same way, as the marginal rate between a small and a large run, (N - n) / (T(N) - T(n)): what a
longer evaluation adds per request, with each tool's fixed start-up (Ray actors; ais_bench's processes) cancelled.

    python -m bench.client_rate [--quick]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from bench.ais_bench_cli import run_ais_bench
from bench.common import QUICK, Result, eval_body, local_ray, minimal_client, report, sim_server
from eval_jobs.demo_dataset import RELATIVE_PATH, demo_problems
from eval_jobs.records import SampleKey, SampleRequest
from eval_jobs.work import ClientSettings, distribute

REQUESTS = 200 if QUICK else 2000
SMALL = REQUESTS // 10  # the short run of the marginal rate
CLIENTS, CONCURRENCY, LEASE = 2, 16, 4  # evalcluster's defaults (eval.clients, concurrency, lease_size)


def body(i: int) -> dict:
    return eval_body("sim", [{"role": "user", "content": f"question {i}"}], max_tokens=4)


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


def ais_bench_data(root: Path, n: int) -> Path:
    """A datasets dir whose demo_arith file holds the 50 demo problems repeated to `n` rows."""
    path = root / RELATIVE_PATH
    path.parent.mkdir(parents=True)
    problems = demo_problems()
    path.write_text("".join(json.dumps(problems[i % len(problems)]) + "\n" for i in range(n)))
    return root


def marginal(small: float | None, large: float | None) -> float | None:
    """Requests/s a longer run adds, from the wall times of SMALL and REQUESTS requests."""
    return (REQUESTS - SMALL) / (large - small) if small and large and large > small else None


def main() -> None:
    bench = "client_rate"
    in_flight = CLIENTS * CONCURRENCY
    with local_ray(num_cpus=2), sim_server("sim") as url, tempfile.TemporaryDirectory() as tmp:
        evalcluster_rate(url, 100)  # warm-up: Ray's worker pool, imports in the actors
        minimal_rate(url, 100)
        # Minimal on both sides of evalcluster: the simulator shares 2 cores with everything, so it drifts.
        before = minimal_rate(url, REQUESTS)
        rate, steady, failed = evalcluster_rate(url, REQUESTS)
        small_rate, _, _ = evalcluster_rate(url, SMALL)
        after = minimal_rate(url, REQUESTS)
        data = ais_bench_data(Path(tmp), REQUESTS)
        # Inference only: the evalcluster side does not score either. The first run is a warm-up (its first start
        # on this machine took 44 s for 200 requests, the next 30 s for 2000).
        ais = {n: run_ais_bench(url, "sim", in_flight, 4, f"rate-{n}", num_prompts=n, data_dir=data, infer_only=True)
               for n in (SMALL, SMALL, REQUESTS)}
    minimal = (before + after) / 2
    ours = marginal(SMALL / small_rate, REQUESTS / rate)
    theirs = marginal(ais[SMALL], ais[REQUESTS])
    print(f"minimal {before:.0f} / {after:.0f} req/s, evalcluster {rate:.0f} req/s ({steady:.0f} once its actors "
          f"run, {ours or float('nan'):.0f} marginal; {failed} failed), ais_bench {ais[SMALL]} s for {SMALL}, "
          f"{ais[REQUESTS]} s for {REQUESTS}")
    note = f"{REQUESTS} requests, {CLIENTS} clients x {CONCURRENCY} in flight"
    results = [
        Result(bench, "minimal single-process rate", minimal, "req/s",
               note=f"{REQUESTS} requests, {in_flight} in flight, before/after average"),
        Result(bench, "evalcluster rate", rate, "req/s", note=note + (f", {failed} FAILED" if failed else "")),
        Result(bench, "evalcluster rate once actors run", steady, "req/s", note="first request sent to last answer"),
        Result(bench, "evalcluster/minimal once actors run", steady / minimal),
        Result(bench, "evalcluster/minimal", rate / minimal, note=note),
    ]
    if ours and theirs:
        results += [
            Result(bench, "evalcluster marginal rate", ours, "req/s", note=f"{SMALL} vs {REQUESTS} requests"),
            Result(bench, "ais_bench marginal rate", theirs, "req/s",
                   note=f"{SMALL} vs {REQUESTS} requests, batch_size {in_flight}, --mode infer; whole CLI run "
                        f"{ais[REQUESTS]:.1f} s for {REQUESTS}"),
            Result(bench, "evalcluster/ais_bench sustained rate", ours / theirs, target=">= 4",
                   note="marginal rates, both measured here"),
        ]
    else:
        print("no evalcluster/ais_bench ratio: a run failed or the larger was not slower")
    report(results)


if __name__ == "__main__":
    main()
