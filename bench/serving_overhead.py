"""Benchmark 1: what the endpoint (Serve proxy → ingress → engine supervisor) adds to the engine it fronts.

The peer is the same vLLM process: `engine_info` gives the URL of the engine the supervisor started, so weights,
batching and the machine's state are identical on both sides and only the path differs. Fixed output length
(ignore_eos) makes every request the same work. Rounds alternate A/B then B/A, so drift on a shared box (other
jobs, thermal) falls on both sides alike.

    python -m bench.serving_overhead [--quick]
"""

from __future__ import annotations

import asyncio
import time

import httpx

from bench.common import DTYPE, QUICK, SMOLLM2, Result, local_ray, minimal_client, pct, report
from serve_apps.config import EngineConfig, ModelConfig, ServeConfig
from serve_apps.endpoint import Endpoint
from serve_apps.engine_process import engine_headers

NAME = "smollm2"
REQUESTS, CONCURRENCY, ROUNDS = (16, 8, 1) if QUICK else (48, 16, 2)
STREAMED = 16  # requests per side per round streamed for TTFT: p50 needs fewer than throughput does
# The path's own added latency: single requests one at a time, sides alternating request by request, one token
# each, so neither the engine's batching nor its drift between rounds is in the difference.
PROBES = 10 if QUICK else 40


def bodies(stream: bool, n: int = REQUESTS, max_tokens: int = 32) -> list[dict]:
    # Distinct prompts so no prefix cache makes later requests cheaper than earlier ones.
    out = []
    for i in range(n):
        body = {"model": NAME, "messages": [{"role": "user", "content": f"Request {i}: count slowly to twenty."}],
                "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        out.append(body)
    return out


async def alternating_singles(sides: dict[str, str], headers: dict[str, dict[str, str]]) -> dict[str, list[float]]:
    """Latency of PROBES one-token requests per side, sent one at a time, sides alternating request by request
    (and which goes first), each on its own kept-alive connection, warmed first so no connect time is in it. Each
    request has a prompt of its own, so neither side finds the other's prefix in vLLM's cache."""
    clients = {s: httpx.AsyncClient(base_url=url, headers=headers[s], timeout=60, trust_env=False)
               for s, url in sides.items()}
    latencies: dict[str, list[float]] = {s: [] for s in sides}
    prompts = iter(bodies(False, len(sides) * (PROBES + 1), max_tokens=1))
    try:
        for i in range(PROBES + 1):
            for side in (list(sides) if i % 2 == 0 else list(reversed(sides))):
                body = next(prompts)
                t0 = time.perf_counter()
                (await clients[side].post("/v1/chat/completions", json=body)).raise_for_status()
                if i:  # the first one opened the connection
                    latencies[side].append(time.perf_counter() - t0)
    finally:
        for client in clients.values():
            await client.aclose()
    return latencies


def main() -> None:
    engine = EngineConfig(platform="cpu", cpus_per_replica=1, omp_num_threads=1, startup_timeout_s=600)
    cfg = ServeConfig(port=0, engine=engine, models=[ModelConfig(
        model=str(SMOLLM2), served_model_name=NAME, dtype=DTYPE, max_model_len=1024)])
    with local_ray(num_cpus=4):
        ep = Endpoint(cfg)
        try:
            ep.start()
            info = ep.engine_info(NAME)
            sides = {"endpoint": ep.url, "bare": info["url"]}
            headers = {"endpoint": {}, "bare": engine_headers(info)}  # the engine answers only with its own key
            print(f"endpoint {sides['endpoint']}  bare engine {sides['bare']}")
            for side, url in sides.items():  # warm both paths (connections, Serve handles) outside the timing
                minimal_client(url, bodies(False)[:CONCURRENCY], CONCURRENCY, headers[side])

            wall = {s: 0.0 for s in sides}
            latencies = {s: [] for s in sides}
            ttfts = {s: [] for s in sides}
            for r in range(ROUNDS):
                order = list(sides) if r % 2 == 0 else list(reversed(sides))
                for side in order:
                    seconds, timings = minimal_client(sides[side], bodies(False), CONCURRENCY, headers[side])
                    wall[side] += seconds
                    latencies[side] += [t.latency_s for t in timings]
                    print(f"round {r} {side:8s} non-streaming {REQUESTS / seconds:6.2f} req/s")
                for side in reversed(order):
                    _, timings = minimal_client(sides[side], bodies(True, STREAMED), CONCURRENCY, headers[side])
                    ttfts[side] += [t.ttft_s for t in timings if t.ttft_s is not None]
            single = asyncio.run(alternating_singles(sides, headers))
        finally:
            ep.shutdown()

    total = REQUESTS * ROUNDS
    rate = {s: total / wall[s] for s in sides}

    def added(values: dict[str, list[float]], q: float) -> float:
        return (pct(values["endpoint"], q) - pct(values["bare"], q)) * 1000

    bench = "serving_overhead"
    report([
        Result(bench, "bare engine throughput", rate["bare"], "req/s", note=f"{total} req, c={CONCURRENCY}"),
        Result(bench, "endpoint throughput", rate["endpoint"], "req/s"),
        Result(bench, "p99 latency added", added(latencies, 99), "ms"),
        Result(bench, "streaming TTFT p50 added", added(ttfts, 50), "ms"),
        Result(bench, "p50 latency added under load", added(latencies, 50), "ms",
               note="engine batching and drift between rounds dominate this"),
        Result(bench, "p50 latency added, single requests", added(single, 50), "ms", "<= 5",
               note=f"{PROBES} one-token requests at c=1, sides alternating request by request; "
                    f"bare p50 {pct(single['bare'], 50) * 1000:.1f} ms"),
        Result(bench, "throughput ratio endpoint/bare", rate["endpoint"] / rate["bare"], "", ">= 0.97"),
    ])


if __name__ == "__main__":
    main()
