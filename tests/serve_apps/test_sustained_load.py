"""Sustained load on the shared endpoint (bounded in count and time, loopback only): every request answered, and
the memory of the processes on the request path (Serve's proxy, the ingress, the engine supervisor) flat.

The endpoint's real vLLM engine (tiny-a) answers one token per request, so the load is the serving path's, not
the engine's. Memory is compared between the end of a warm-up and the end of the run: Python processes grow
while their pools and caches fill, then should stay put.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import psutil
import pytest

pytestmark = pytest.mark.engine

# Ray titles its worker processes "ray::<Class>…"; these three sit on every request's path.
PATH_PROCESSES = ("ray::ProxyActor", "ray::ServeReplica:evalcluster:OpenAIIngress",
                  "ray::ServeReplica:engine:tiny-a:EngineSupervisor")
ALLOWED_GROWTH_MIB = 40  # per process, warm-up end → run end


def path_rss_mib() -> dict[str, float]:
    rss: dict[str, float] = {}
    for proc in psutil.process_iter(["cmdline", "memory_info"]):
        title = (proc.info["cmdline"] or [""])[0]
        for name in PATH_PROCESSES:
            if title.startswith(name):
                rss[name] = rss.get(name, 0.0) + proc.info["memory_info"].rss / 2**20
    return rss


async def load(url: str, headers: dict[str, str], requests: int, concurrency: int) -> list[int]:
    gate = asyncio.Semaphore(concurrency)
    body = {"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits, trust_env=False) as client:
        async def one(i: int) -> int:
            async with gate:
                stream = i % 2 == 1  # half streamed, half not: both response paths carry load
                response = await client.post("/v1/chat/completions", json={**body, "stream": stream})
                await response.aread()
                return response.status_code

        return await asyncio.gather(*(one(i) for i in range(requests)))


def run_load(endpoint, auth, requests: int) -> None:
    warm = asyncio.run(load(endpoint.url, auth, requests // 4, 16))
    before = path_rss_mib()
    assert set(before) == set(PATH_PROCESSES), before
    t0 = time.perf_counter()
    statuses = asyncio.run(load(endpoint.url, auth, requests, 16))
    seconds = time.perf_counter() - t0
    after = path_rss_mib()
    assert [s for s in warm + statuses if s != 200] == []
    growth = {name: after[name] - before[name] for name in PATH_PROCESSES}
    print(f"{requests} requests in {seconds:.0f} s ({requests / seconds:.1f}/s); RSS growth (MiB): {growth}")
    assert all(g < ALLOWED_GROWTH_MIB for g in growth.values()), growth
    assert httpx.get(f"{endpoint.url}/health", timeout=10, trust_env=False).status_code == 200


def test_sustained_load_quick(endpoint, auth):
    run_load(endpoint, auth, 400)


@pytest.mark.faults
def test_sustained_load_4000_requests(endpoint, auth):
    run_load(endpoint, auth, 4000)
