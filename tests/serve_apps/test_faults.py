"""Faults on the serving side while an evaluation's clients are sending: the replica or the engine child dies,
Serve replaces it, the clients' retries carry the samples over; 0 lost, 0 duplicated, through the shared endpoint
and through the data plane alike.

The checkpoint is served by the simulated-latency engine (it restarts in seconds, so the retries' backoff covers
the replacement); this test checks orchestration and makes no score.
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
import ray

from eval_jobs.records import SampleKey, SampleRequest
from eval_jobs.evaluation import data_plane
from eval_jobs.work import ClientSettings
from serve_apps.config import EngineConfig, ModelConfig
from shared import API_KEY, distribute_with_fault

pytestmark = pytest.mark.engine  # the shared endpoint fixture serves vLLM engines


def kill_replica(endpoint, name: str) -> None:
    replica = next(n for n in ray.util.list_named_actors(all_namespaces=True)
                   if n["name"].startswith(f"SERVE_REPLICA::engine:{name}#"))
    ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]))


def kill_engine_child(endpoint, name: str) -> None:
    guard = endpoint.engine_info(name)["pid"]
    os.kill(int(subprocess.check_output(["pgrep", "-P", str(guard)]).split()[0]), signal.SIGKILL)


@pytest.mark.parametrize("route", ["endpoint", "data-plane"])
@pytest.mark.parametrize("fault", [kill_replica, kill_engine_child], ids=["replica", "engine-child"])
def test_evaluation_survives_a_dying_replica_or_engine(endpoint, fault, route):
    """Through the shared endpoint (HTTP: the proxy answers 500) and through Serve handles (ActorDiedError, or the
    supervisor's EngineUnavailableError): retried through either way."""
    name = f"sim-fault-{fault.__name__}-{route}".replace("_", "-")
    # 32 tokens at 20 ms: each request spends ~0.7 s at the replica, so the kill finds some there (with 8 tokens a
    # loaded machine could kill it between requests, and the fault went unfelt).
    engine = EngineConfig(kind="sim", sim={"ttft_s": 0.05, "tpot_s": 0.02, "output_tokens": 32},
                          cpus_per_replica=0, health_check_period_s=1, health_timeout_s=2)
    endpoint.add_models([ModelConfig(model=f"/ckpt/{name}")], engine=engine)
    try:
        where = endpoint.url if route == "endpoint" else data_plane(name)
        requests = [SampleRequest(key=SampleKey(name, "d", i, 0), endpoint=where,
                                  body={"model": name, "messages": [{"role": "user", "content": f"q{i}"}]})
                    for i in range(120)]
        settings = ClientSettings(concurrency=4, lease_size=2, timeout_s=30, max_retries=6, backoff_s=0.5,
                                  api_key=API_KEY)
        results = distribute_with_fault(requests, settings, lambda: fault(endpoint, name), after=20)
    finally:
        endpoint.remove_model(name)
    keys = [r.key for r in results]
    assert len(keys) == len(set(keys)) == 120
    failed = [r.error for r in results if r.status != "ok"]
    assert not failed, failed[:3]
    assert max(r.attempts for r in results) > 1  # the fault was felt, and retried through
