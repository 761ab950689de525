"""Benchmark 3: does evaluation time scale with the replicas serving a checkpoint, up to the engines' own limit?

The simulated-latency engine with a batch-slot limit (`max_num_seqs`) has a capacity known in advance: R replicas
of S slots finish N equal requests of T seconds each no sooner than ⌈N / (R·S)⌉ · T. One checkpoint is served by
1, 2, 4, 8, 16 and 32 replicas (tp 1) spread over a simulated cluster of 8 NPU hosts × 4 NPUs, every host a
network namespace of its own (cluster.simulate), and evaluated by evalcluster's client actors through the data
plane (Serve handles to the engine supervisors, as a job evaluating the cluster's own checkpoints sends them);
the ratio of the evaluation's wall time to that engine-bound ideal is the result (target ≤ 1.10 at every size).
Sizes grow by adding replicas to the running deployment (Serve keeps the ones it has), so 32 engines start once.

Then the long tail: the same requests with a few 20× longer, on 4 replicas, sent two ways with the same number in
flight and the same transport: evalcluster's dynamic distribution (clients lease work as slots free up) and static
shards (each in-flight slot owns a fixed slice of the dataset up front, as a per-process split does; sent from this
driver). The bound for both is the larger of the total work spread over every slot and the longest single request.

    python -m bench.scale [--quick] [--with-64] [--sizes=16,32]
"""

from __future__ import annotations

import os

from cluster.simulate import SIM_ENV

# Before anything imports Ray: several Ray nodes on one machine need Ray's multi-node switch at import time.
os.environ.update(SIM_ENV)

import asyncio  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from ray import serve  # noqa: E402
from ray.util.state import list_actors  # noqa: E402

from bench.common import QUICK, Result, eval_body, report  # noqa: E402
from cluster.simulate import SimulatedCluster, simulated_cluster  # noqa: E402
from eval_jobs.client import Bounds, Transports, send_chat  # noqa: E402
from eval_jobs.records import SampleKey, SampleRequest, SampleResult  # noqa: E402
from eval_jobs.evaluation import data_plane  # noqa: E402
from eval_jobs.work import ClientSettings, distribute  # noqa: E402
from serve_apps.config import EngineConfig, ModelConfig, ServeConfig  # noqa: E402
from serve_apps.endpoint import Endpoint  # noqa: E402
from sim_engine import SimEngineConfig  # noqa: E402

# `--with-64` (by hand, ~4 GB more memory and minutes more than `make bench` allows): 8 NPUs a host, up to 64.
WITH_64 = "--with-64" in sys.argv[1:]
NODES, NPUS = 8, 8 if WITH_64 else 4
SIZES = (1, 2, 4, 8, 16, 32, 64) if WITH_64 else (1, 2, 4, 8, 16, 32)
# `--sizes=16,32` (by hand, to look into one size): only those, without the long tail.
CHOSEN = next((tuple(int(n) for n in a.split("=", 1)[1].split(",")) for a in sys.argv[1:] if a.startswith("--sizes=")),
              None)
SLOTS = 4  # the simulated engine's max_num_seqs
# 1.35 s per request. 20 per slot: requests are handed to engines ahead of their slots (below), so when the
# dataset runs out some engines hold one or two more than others (37-42 of 40 each at 16 replicas, measured), and
# the ones with more run one extra request's time after the rest are idle. That end effect is one request's time
# whatever the dataset's size: 10 % of a 10-per-slot run, 5 % of this one (bench/history/2026-11-29.md). The request
# time itself only sets the run time (6 sizes must fit in minutes) and the request rate (128 slots / 1.35 s at 32
# replicas: ~95 requests/s on 2 shared cores).
TTFT_S, TPOT_S, TOKENS = 0.3, 0.15, 8
ROUNDS = 4 if QUICK else 20  # requests per slot
# Clients keep twice the slots busy: Serve spreads requests over replicas by sampled queue lengths, not perfectly,
# and a short queue at every engine keeps a slot from idling while another engine has two waiting. Each replica
# accepts at most that many (`max_ongoing_requests`), so the queues stay even: uncapped, Serve's sampling left some
# engines two or three requests more than others when the dataset ran out, and they ran on alone (1.0 s of a
# 29.7 s run at 16 replicas; capped, 0.1 s of 28.6). (Capping at the slots instead leaves the queue in Serve's
# router, which retries full replicas with a backoff: ~0.4 s per hand-off, 1.10 already at 1 replica.)
OVERSUBSCRIBE = 2
CLIENTS = 2
# The long tail: on LONG_TAIL_REPLICAS replicas, LONG_COUNT of the requests (5%) generate LONG_FACTOR x the tokens.
LONG_TAIL_REPLICAS, LONG_FACTOR = 4, 20
LONG_ROUNDS = 4 if QUICK else 10  # 160 requests: the two ways of sending them take ~20 s each
LONG_COUNT = LONG_TAIL_REPLICAS * SLOTS * LONG_ROUNDS // 20  # 5 %
LONG_TPOT_S = 0.05  # a 160-token answer at 0.15 s/token would make this part alone take minutes
MODEL = "scale-ckpt"
LONG_MODEL = "scale-long-tail"


def generation_s(tokens: int, tpot_s: float) -> float:
    return TTFT_S + (tokens - 1) * tpot_s


def requests_for(model: str, max_tokens: list[int]) -> list[SampleRequest]:
    """Requests to `model` through the data plane: what `eval_jobs.evaluation` sends for a checkpoint the cluster serves."""
    return [SampleRequest(key=SampleKey(model, "bench", i, 0), endpoint=data_plane(model),
                          body=eval_body(model, [{"role": "user", "content": f"question {i}"}], n))
            for i, n in enumerate(max_tokens)]


def evaluate(requests: list[SampleRequest], in_flight: int) -> tuple[float, list[SampleResult]]:
    """evalcluster's client actors on `requests`; (seconds from the first request sent to the last answer,
    results). Actor start-up is left out: it is a fixed cost per job, measured cold in client_vs_peers."""
    settings = ClientSettings(concurrency=max(1, in_flight // CLIENTS), lease_size=4, timeout_s=600, max_retries=0,
                              backoff_s=0)
    results: list[SampleResult] = []
    distribute(requests, settings, CLIENTS, results.extend)
    return max(r.finished_at for r in results) - min(r.started_at for r in results), results


async def _static(shards: list[list[SampleRequest]]) -> tuple[float, int]:
    async with Transports(len(shards)) as transports:
        async def worker(shard: list[SampleRequest]) -> int:
            failed = 0
            for request in shard:
                result = await send_chat(transports, request, bounds=Bounds(idle_s=600), max_retries=0, backoff_s=0)
                failed += result.status != "ok"
            return failed

        t0 = time.perf_counter()
        failed = await asyncio.gather(*(worker(shard) for shard in shards))
        return time.perf_counter() - t0, sum(failed)


def static_shards(requests: list[SampleRequest], workers: int) -> tuple[float, int]:
    """Each of `workers` in-flight slots gets a contiguous slice up front and sends it in order, through the same
    transport as the client actors (from this driver); (seconds taken, failed requests)."""
    size = -(-len(requests) // workers)
    return asyncio.run(_static([requests[i:i + size] for i in range(0, len(requests), size)]))


def replica_hosts(sim: SimulatedCluster, model: str) -> int:
    """How many hosts the live supervisor replicas of `model` run on."""
    actors = list_actors(address=sim.dashboard_url, filters=[("state", "=", "ALIVE")], detail=True, limit=10_000,
                         raise_on_missing_output=False)
    return len({a.node_id for a in actors if (a.class_name or "").startswith(f"ServeReplica:engine:{model}:")})


def steady_and_ends(records: list[SampleResult]) -> tuple[float, float, float]:
    """(requests/s between the 10th and the 90th percentile of finish times, seconds lost at the start, seconds
    lost at the end). The steady rate is the engines' once every slot is busy: below slots ÷ request time,
    something between client and engine costs time on every hand-off. The ends are what the first and the last
    10 % took beyond that rate: the clients' staggered start, and engines left holding more than their share."""
    finished = sorted(r.finished_at for r in records)
    n = len(finished)
    lo, hi = n // 10, n * 9 // 10
    rate = (hi - lo) / max(1e-9, finished[hi] - finished[lo])
    start_s = finished[lo] - min(r.started_at for r in records) - lo / rate
    end_s = finished[-1] - finished[hi] - (n - 1 - hi) / rate
    return rate, start_s, end_s


def available_gib() -> float:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:")) / 2**20


def scaling(sim: SimulatedCluster, endpoint: Endpoint, sizes: tuple[int, ...] = SIZES) -> list[Result]:
    """Equal requests, ROUNDS per slot, on each number of replicas: wall time over the engine-bound ideal. The
    deployment grows in place from one size to the next."""
    results = []
    ideal = ROUNDS * generation_s(TOKENS, TPOT_S)
    for replicas in sizes:
        slots = replicas * SLOTS
        t0 = time.perf_counter()
        endpoint.add_models([ModelConfig(model=f"/ckpt/{MODEL}", num_replicas=replicas)])
        deploy_s = time.perf_counter() - t0
        hosts = replica_hosts(sim, MODEL)
        requests = requests_for(MODEL, [TOKENS] * (slots * ROUNDS))
        wall, records = evaluate(requests, OVERSUBSCRIBE * slots)
        failed = sum(r.status != "ok" for r in records)
        rate, start_s, end_s = steady_and_ends(records)
        steady = rate / (slots / generation_s(TOKENS, TPOT_S))
        print(f"{replicas:>2} replicas on {hosts} hosts (ready in {deploy_s:.0f} s, {available_gib():.1f} GiB "
              f"available): {len(requests)} requests in {wall:.1f} s, ideal {ideal:.1f} s, "
              f"{len(requests) / wall:.1f} req/s, steady rate {steady:.3f} of the engines', "
              f"{start_s:.1f} s lost at the start and {end_s:.1f} s at the end, {failed} failed", flush=True)
        results.append(Result("scale", f"wall/engine-bound ideal, {replicas} replicas", wall / ideal, target="<= 1.10",
                              note=f"{len(requests)} requests, {slots} slots, {hosts} hosts, ideal {ideal:.1f} s; "
                              f"steady rate {steady:.3f} of the engines', {start_s:.1f} s lost at the start, {end_s:.1f} s at the end"
                              + (f", {failed} FAILED" if failed else "")))
    endpoint.remove_model(MODEL)
    return results


def long_tail(endpoint: Endpoint) -> list[Result]:
    """A few requests LONG_FACTOR x longer, placed at random: evalcluster's dynamic distribution vs static shards,
    the same requests with the same number in flight."""
    slots = LONG_TAIL_REPLICAS * SLOTS
    engine = endpoint.cfg.engine
    slower = engine.model_copy(update={"sim": engine.sim.model_copy(update={"tpot_s": LONG_TPOT_S})})
    endpoint.add_models([ModelConfig(model=f"/ckpt/{LONG_MODEL}", num_replicas=LONG_TAIL_REPLICAS)],
                        engine=slower)
    lengths = [TOKENS] * (slots * LONG_ROUNDS)
    for i in random.Random(0).sample(range(len(lengths)), LONG_COUNT):
        lengths[i] = TOKENS * LONG_FACTOR
    requests = requests_for(LONG_MODEL, lengths)
    work = [generation_s(n, LONG_TPOT_S) for n in lengths]
    bound = max(sum(work) / slots, max(work))
    static_s, static_failed = static_shards(requests, slots)
    dynamic_s, records = evaluate(requests, slots)
    endpoint.remove_model(LONG_MODEL)
    failed = sum(r.status != "ok" for r in records)
    print(f"long tail: {len(requests)} requests ({LONG_COUNT} x{LONG_FACTOR} longer) on {slots} slots: "
          f"dynamic {dynamic_s:.1f} s, static {static_s:.1f} s, bound {bound:.1f} s", flush=True)
    note = f"{len(requests)} requests, {LONG_COUNT} of them {LONG_FACTOR}x longer, {slots} in flight"
    return [
        Result("scale", "long tail: dynamic/bound", dynamic_s / bound, note=note + (f", {failed} FAILED" if failed else "")),
        Result("scale", "long tail: static shards/bound", static_s / bound,
               note=note + (f", {static_failed} FAILED" if static_failed else "")),
        Result("scale", "long tail: static/dynamic", static_s / dynamic_s,
               note="above 1: dynamic distribution finishes first"),
    ]


def main() -> None:
    engine = EngineConfig(kind="sim", platform="ascend", cpus_per_replica=0, startup_timeout_s=300,
                          sim=SimEngineConfig(ttft_s=TTFT_S, tpot_s=TPOT_S, max_num_seqs=SLOTS),
                          max_ongoing_requests=OVERSUBSCRIBE * SLOTS)
    with simulated_cluster(nodes=NODES, npus_per_node=NPUS, cpus_per_node=2, head_cpus=2) as sim:
        endpoint = Endpoint(ServeConfig(port=0, engine=engine)).start()
        try:
            results = scaling(sim, endpoint, CHOSEN) if CHOSEN else scaling(sim, endpoint) + long_tail(endpoint)
        finally:
            serve.shutdown()
    report(results)


if __name__ == "__main__":
    main()
