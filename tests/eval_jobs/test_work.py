"""Work distribution: the queue's lease rules (expiry, renewal, late and duplicate answers) and, under faults, a
client actor killed mid-run losing nothing and duplicating nothing.

The server is the simulated-latency engine: these tests count requests and check orchestration; no score is made.
"""

from __future__ import annotations

import threading
import time

import pytest
import ray

from eval_jobs.records import SampleKey, SampleRequest, SampleResult
from eval_jobs.work import CLIENT_PREFIX, ClientSettings, Leases, distribute
from shared import distribute_with_fault, sim_engine, sim_requests


@pytest.fixture
def sim_server():
    with sim_engine(ttft_s=0.1, tpot_s=0.05, output_tokens=8) as url:
        yield url


class Clock:
    """A clock the test moves by hand: lease expiry without waiting, and without timing assertions."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def keys(n: int) -> list[SampleKey]:
    return [SampleKey("m", "d", i, 0) for i in range(n)]


def requests_for(n: int) -> list[SampleRequest]:
    return [SampleRequest(key=k, endpoint="http://127.0.0.1:1", body={}) for k in keys(n)]


def answer(key: SampleKey, status: str = "ok") -> SampleResult:
    return SampleResult(model=key.model, dataset=key.dataset, index=key.index, repeat=key.repeat,
                        status=status, endpoint="http://127.0.0.1:1", prompt=[], started_at=0.0)  # type: ignore[arg-type]


def test_late_answers_of_expired_leases_drain_the_queue():
    """The issue's reproduction: client A holds more expired leases than B has free slots, then answers late. Before,
    keys A finished stayed pending, were leased again, their duplicate answers kept their leases, and remaining()
    never reached 0 (the same keys re-sent every lease timeout, forever)."""
    clock = Clock()
    queue = Leases(requests_for(6), ttl_s=10, clock=clock)
    a = [r.key for r in queue.lease("A", 4)]
    b = [r.key for r in queue.lease("B", 2)]
    assert a == keys(6)[:4] and b == keys(6)[4:]
    clock.now = 11  # A stopped renewing; B answers and has 2 free slots
    again = [r.key for r in queue.lease("B", 2, [answer(k) for k in b])]
    assert again == a[:2]  # two of A's expired samples, the other two wait in the queue
    queue.lease("A", 0, [answer(k) for k in a])  # A's answers arrive late: every key is finished now
    assert queue.remaining() == 0
    assert queue.lease("C", 10) == []  # a finished key is never leased again
    queue.lease("B", 2, [answer(k) for k in again])  # B's duplicates are dropped and clear B's leases
    assert queue.renew("B", again) == again  # B holds nothing any more
    results, remaining = queue.take_results()
    assert remaining == 0 and sorted(r.key for r in results) == keys(6)  # each key once


def test_a_renewed_lease_outlives_the_ttl_and_an_unrenewed_one_expires():
    clock = Clock()
    queue = Leases(requests_for(2), ttl_s=10, clock=clock)
    (first,), (second,) = queue.lease("A", 1), queue.lease("B", 1)
    for t in (8, 16, 24, 32):  # A's request streams for 32 s and renews every 8 s; B stopped at 0
        clock.now = t
        assert queue.renew("A", [first.key]) == []
    assert [r.key for r in queue.lease("C", 2)] == [second.key]  # only B's expired
    assert queue.renew("B", [second.key]) == [second.key]  # B learns it lost it and can stop its request
    clock.now = 40
    queue.lease("A", 0, [answer(first.key)])
    assert queue.remaining() == 1


def test_a_late_failure_does_not_finish_a_sample_another_client_is_answering():
    clock = Clock()
    queue = Leases(requests_for(1), ttl_s=10, clock=clock)
    (req,) = queue.lease("A", 1)
    clock.now = 11
    assert queue.lease("B", 1) == [req]
    queue.lease("A", 0, [answer(req.key, "failed")])  # A's attempt ended at its idle bound, after its lease
    assert queue.remaining() == 1  # B may still succeed
    queue.lease("B", 0, [answer(req.key)])
    results, remaining = queue.take_results()
    assert remaining == 0 and [r.status for r in results] == ["ok"]


def test_released_leases_go_back_first():
    queue = Leases(requests_for(4), ttl_s=10, clock=Clock())
    held = queue.lease("A", 2)
    assert queue.release("A") == 2
    assert queue.lease("B", 2) == held


def test_leases_stay_alive_while_answers_stream_past_the_ttl(ray_cluster):
    """Real client actors against the simulator: every answer streams ~12 s, 2x the lease TTL, and no sample is sent
    twice, because the clients renew the leases of requests still in flight (without renewals: 14 sends of 8)."""
    with sim_engine(ttft_s=0.1, tpot_s=0.3, output_tokens=40) as url:
        requests = [SampleRequest(key=SampleKey("sim", "d", i, 0), endpoint=url,
                                  body={"model": "sim", "messages": [{"role": "user", "content": f"q{i}"}],
                                        "max_tokens": 40})
                    for i in range(8)]
        # TTL 6 s, renewed every 1.5 s: room for a loaded machine's slow actor calls.
        settings = ClientSettings(concurrency=2, lease_size=2, timeout_s=10, max_retries=0, backoff_s=0.1,
                                  lease_ttl_s=6.0)
        results: list[SampleResult] = []
        lock = threading.Lock()

        def collect(batch: list[SampleResult]) -> None:
            with lock:
                results.extend(batch)

        assert distribute(requests, settings, 2, collect) == 0  # no client restarted
        assert sim_requests(url) == 8
    assert sorted(r.key for r in results) == [r.key for r in requests]
    assert [(r.status, r.completion_tokens) for r in results] == [("ok", 40)] * 8, [r.error for r in results]


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
    served = sim_requests(sim_server)
    assert served >= 80  # the killed client's in-flight samples were sent again
    deadline = time.monotonic() + 30  # ray.kill is asynchronous
    while [n for n in ray.util.list_named_actors() if n.startswith(CLIENT_PREFIX)]:
        assert time.monotonic() < deadline, "client actors outlived their run"
        time.sleep(0.5)
