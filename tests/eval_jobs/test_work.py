"""Work distribution under faults: a client actor killed mid-run loses nothing and duplicates nothing.

The server is the simulated-latency engine: this test counts requests and checks orchestration; no score is made.
"""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest
import ray

from eval_jobs.records import SampleKey, SampleRequest
from eval_jobs.work import CLIENT_PREFIX, ClientSettings
from serve_apps.engine_process import free_port
from shared import distribute_with_fault


@pytest.fixture
def sim_server():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "serve_apps.sim_engine", "--served-model-name", "sim",
                             "--ttft-s", "0.1", "--tpot-s", "0.05", "--output-tokens", "8",
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_killed_client_actor_gives_its_samples_back(ray_cluster, sim_server):
    requests = [SampleRequest(key=SampleKey("sim", "d", i, 0), endpoint=sim_server,
                              body={"model": "sim", "messages": [{"role": "user", "content": f"q{i}"}]})
                for i in range(80)]
    settings = ClientSettings(concurrency=4, lease_size=2, timeout_s=30, max_retries=1, backoff_s=0.1)

    def kill_a_client() -> None:
        victims = [name for name in ray.util.list_named_actors() if name.startswith(CLIENT_PREFIX)]
        assert len(victims) == 2
        ray.kill(ray.get_actor(victims[0]))  # mid-run: it holds leases and requests in flight

    results = distribute_with_fault(requests, settings, kill_a_client, after=15)
    keys = [r.key for r in results]
    assert len(keys) == len(set(keys)) == 80  # 0 lost, 0 duplicated
    assert all(r.status == "ok" for r in results)
    served = httpx.get(sim_server + "/sim/stats").json()["requests"]
    assert served >= 80  # the killed client's in-flight samples were sent again
    deadline = time.monotonic() + 30  # ray.kill is asynchronous
    while [n for n in ray.util.list_named_actors() if n.startswith(CLIENT_PREFIX)]:
        assert time.monotonic() < deadline, "client actors outlived their run"
        time.sleep(0.5)
