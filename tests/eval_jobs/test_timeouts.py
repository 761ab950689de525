"""Timeouts bound silence, not length: against the simulated engine (time matters here, text does not), a steady
answer that streams far longer than the idle bound is never cut, and a silent engine ends every attempt within
the bound that applies, named in the sample's error. The same on HTTP and on the Serve-handle data plane."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from eval_jobs.client import Bounds, Transports, send_chat, serve_endpoint
from eval_jobs.records import SampleKey, SampleRequest, SampleResult
from shared import API_KEY, sim_engine, sim_requests

MESSAGES = [{"role": "user", "content": "count"}]


def send(endpoint: str, bounds: Bounds, *, max_tokens: int, max_retries: int = 2, model: str = "sim") -> SampleResult:
    # stream_interval 1: one token per event, so the gaps between events are the engine's own time per token.
    request = SampleRequest(key=SampleKey(model, "d", 0, 0), endpoint=endpoint,
                            body={"model": model, "messages": MESSAGES, "max_tokens": max_tokens,
                                  "stream_interval": 1})

    async def main() -> SampleResult:
        async with Transports(2, API_KEY) as transports:  # the key of the session's endpoint (see below)
            return await send_chat(transports, request, bounds=bounds, max_retries=max_retries, backoff_s=0.05)

    return asyncio.run(main())


@pytest.fixture(scope="module")
def steady() -> Iterator[str]:
    """60 tokens, one every 0.25 s: a 15 s answer, 3 x the 5 s idle bound, each gap 20 x below it (margin for a
    loaded machine: a stalled event loop must not pass for a silent engine)."""
    with sim_engine(ttft_s=0.2, tpot_s=0.25, output_tokens=None) as url:
        yield url


def test_a_steady_answer_longer_than_the_idle_bound_is_never_cut(steady: str) -> None:
    # The case scaled down: an answer streaming 3 x longer than eval.timeout_s (was: 0 of 4 ok).
    before = sim_requests(steady)
    res = send(steady, Bounds(idle_s=5, first_token_s=30), max_tokens=60)
    assert res.status == "ok", res.error
    assert res.completion_tokens == 60 and res.attempts == 1
    assert res.latency_s is not None and res.latency_s > 5 * 2  # it really streamed past the bound
    assert sim_requests(steady) - before == 1


def test_the_total_cap_ends_a_steady_answer_and_is_not_retried(steady: str) -> None:
    before = sim_requests(steady)
    res = send(steady, Bounds(idle_s=5, first_token_s=30, total_s=2.0), max_tokens=60)
    assert res.status == "failed" and res.attempts == 1
    assert res.error is not None and "eval.max_request_s" in res.error and "not retried" in res.error
    assert sim_requests(steady) - before == 1


def test_no_first_token_ends_every_attempt_at_the_first_token_bound() -> None:
    with sim_engine(ttft_s=60, tpot_s=0.01) as url:
        started = time.monotonic()
        res = send(url, Bounds(idle_s=30, first_token_s=1.0), max_tokens=4, max_retries=1)
        elapsed = time.monotonic() - started
        assert sim_requests(url) == 2
    assert res.status == "failed" and res.attempts == 2
    assert res.error is not None and "no first token within 1 s (eval.first_token_timeout_s)" in res.error
    assert elapsed < 30  # ended by the 1 s first-token bound, long before the 30 s idle bound or the 60 s TTFT


def test_an_answer_that_stops_midway_ends_at_the_idle_bound() -> None:
    # The first token at once, then 30 s per token: silent after the first event.
    with sim_engine(ttft_s=0.1, tpot_s=30, output_tokens=None) as url:
        res = send(url, Bounds(idle_s=1.0, first_token_s=30), max_tokens=4, max_retries=1)
    assert res.status == "failed" and res.attempts == 2
    assert res.error is not None and "stream idle for 1 s after 1 events" in res.error
    assert "eval.timeout_s, the idle bound" in res.error


def test_the_serve_data_plane_and_the_http_endpoint_bound_silence_the_same_way(ray_cluster) -> None:
    """Serve handles (serve:engine:NAME) and the HTTP endpoint (proxy, ingress, supervisor): a steady answer longer
    than the idle bound arrives whole through both (no layer buffers or cuts it), a silent engine is cut at the
    first-token bound."""
    from serve_apps.config import EngineConfig, ModelConfig, ServeConfig
    from serve_apps.endpoint import Endpoint
    from serve_apps.ingress import engine_app_name

    base = dict(kind="sim", cpus_per_replica=0, startup_timeout_s=120)
    # With the session's key: after the shared endpoint fixture, this joins its Serve and its ingress, which
    # answers key holders only (without it, the readiness check waited out its deadline in the full suite).
    endpoint = Endpoint(ServeConfig(port=0, api_key=API_KEY, engine=EngineConfig(**base))).start()
    slow = EngineConfig(**base, sim={"ttft_s": 0.2, "tpot_s": 0.25})
    silent = EngineConfig(**base, sim={"ttft_s": 60, "tpot_s": 0.01})
    try:
        endpoint.add_models([ModelConfig(model="sim-steady")], engine=slow)
        endpoint.add_models([ModelConfig(model="sim-silent")], engine=silent)
        steady = Bounds(idle_s=4, first_token_s=30)  # 40 tokens over 10 s, a token every 0.25 s
        for where in (serve_endpoint(engine_app_name("sim-steady")), endpoint.url):
            res = send(where, steady, max_tokens=40, model="sim-steady")
            assert res.status == "ok", (where, res.error)
            assert res.completion_tokens == 40 and res.attempts == 1, where
        for where in (serve_endpoint(engine_app_name("sim-silent")), endpoint.url):
            res = send(where, Bounds(idle_s=30, first_token_s=1.0), max_tokens=4, max_retries=0, model="sim-silent")
            assert res.status == "failed", where
            assert res.error is not None and "no first token within 1 s" in res.error, (where, res.error)
    finally:  # also after a failed deploy: nothing may linger for the tests that list the endpoint's models
        endpoint.remove_model("sim-steady")
        endpoint.remove_model("sim-silent")
