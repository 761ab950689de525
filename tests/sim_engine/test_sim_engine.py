"""The simulated-latency engine as a real subprocess on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from cluster.net import free_port

TTFT_S = 0.2
TPOT_S = 0.05
OUTPUT_TOKENS = 6


@dataclass
class SimServer:
    url: str
    proc: subprocess.Popen[bytes]


@contextlib.contextmanager
def running_sim(*extra_args: str, key: str | None = None) -> Iterator[SimServer]:
    """`python -m sim_engine` on a free port, healthy, stopped on exit; with `key`, as the supervisor
    starts it (VLLM_API_KEY in its environment)."""
    port = free_port()
    env = dict(os.environ, ASCEND_RT_VISIBLE_DEVICES="2,3", **({"VLLM_API_KEY": key} if key else {}))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    argv = [sys.executable, "-m", "sim_engine", "--host", "127.0.0.1", "--port", str(port),
            "--served-model-name", "sim-model", "--ttft-s", str(TTFT_S), "--tpot-s", str(TPOT_S),
            "--output-tokens", str(OUTPUT_TOKENS), "--max-model-len", "1000", *extra_args]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # poll /health, fail fast if the process dies
            if proc.poll() is not None:
                raise RuntimeError(f"sim engine exited {proc.returncode}: {proc.stdout.read().decode()}")  # type: ignore[union-attr]
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("sim engine did not become healthy in 60 s")
            time.sleep(0.1)
        yield SimServer(url, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with running_sim() as server:
        yield server


def _stats(sim: SimServer) -> dict:
    return httpx.get(f"{sim.url}/sim/stats").json()


def test_models_card_says_simulator(sim: SimServer) -> None:
    body = httpx.get(f"{sim.url}/v1/models").json()
    [card] = body["data"]
    assert card["id"] == "sim-model"
    assert card["owned_by"] == "evalcluster-simulator"
    assert card["metadata"]["simulator"] is True
    assert card["max_model_len"] == 1000


def test_chat_completion_with_usage_and_latency(sim: SimServer) -> None:
    start = time.monotonic()
    r = httpx.post(
        f"{sim.url}/v1/chat/completions",
        json={
            "model": "sim-model",
            "messages": [{"role": "user", "content": "what is two plus three"}],
            "max_tokens": 100,
        },
        timeout=30,
    )
    elapsed = time.monotonic() - start
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion"
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant"
    assert message["content"] == " ".join(["sim"] * OUTPUT_TOKENS)  # filler, never an answer
    assert body["choices"][0]["finish_reason"] == "stop"  # the simulator's length, not max_tokens, ended it
    assert body["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": OUTPUT_TOKENS,
        "total_tokens": 5 + OUTPUT_TOKENS,
    }
    assert elapsed >= TTFT_S + (OUTPUT_TOKENS - 1) * TPOT_S


def test_completion_respects_max_tokens(sim: SimServer) -> None:
    r = httpx.post(
        f"{sim.url}/v1/completions", json={"model": "sim-model", "prompt": "a b", "max_tokens": 3}, timeout=30
    )
    body = r.json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "sim sim sim"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3


def _sse(response: httpx.Response) -> tuple[list[dict], list[float], bool]:
    """Chunks, their arrival times, and whether the stream ended with [DONE]."""
    chunks, times, done = [], [], False
    for line in response.iter_lines():
        if not line.startswith("data: "):
            continue
        data = line.removeprefix("data: ")
        if data == "[DONE]":
            done = True
            continue
        chunks.append(json.loads(data))
        times.append(time.monotonic())
    return chunks, times, done


def test_streaming_chat_one_token_per_chunk_then_usage_then_done(sim: SimServer) -> None:
    start = time.monotonic()
    with httpx.stream(
        "POST",
        f"{sim.url}/v1/chat/completions",
        json={
            "model": "sim-model",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        timeout=30,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks, times, done = _sse(response)
    assert done
    *token_chunks, usage_chunk = chunks
    assert len(token_chunks) == OUTPUT_TOKENS
    assert token_chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"]["content"] for c in token_chunks) == " ".join(
        ["sim"] * OUTPUT_TOKENS
    )
    assert [c["choices"][0]["finish_reason"] for c in token_chunks] == [None] * (OUTPUT_TOKENS - 1) + ["stop"]
    assert all(c["object"] == "chat.completion.chunk" and c["usage"] is None for c in token_chunks)
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {
        "prompt_tokens": 1,
        "completion_tokens": OUTPUT_TOKENS,
        "total_tokens": 1 + OUTPUT_TOKENS,
    }
    # Lower bounds only: a loaded machine may be slower, never faster.
    assert times[0] - start >= TTFT_S
    assert times[-2] - start >= TTFT_S + (OUTPUT_TOKENS - 1) * TPOT_S


def test_streaming_completion_without_usage(sim: SimServer) -> None:
    with httpx.stream(
        "POST",
        f"{sim.url}/v1/completions",
        json={"model": "sim-model", "prompt": "x", "max_tokens": 2, "stream": True},
        timeout=30,
    ) as response:
        chunks, _, done = _sse(response)
    assert done
    assert [c["choices"][0]["text"] for c in chunks] == ["sim", " sim"]
    assert "usage" not in chunks[-1]


def test_stream_interval_sends_the_first_token_at_once_then_groups(sim: SimServer) -> None:
    # vLLM's rule: the first token alone, then a chunk per `stream_interval` tokens, the remainder last.
    start = time.monotonic()
    with httpx.stream(
        "POST",
        f"{sim.url}/v1/completions",
        json={"model": "sim-model", "prompt": "x", "max_tokens": OUTPUT_TOKENS, "stream": True, "stream_interval": 4},
        timeout=30,
    ) as response:
        chunks, times, done = _sse(response)
    assert done
    assert [c["choices"][0]["text"] for c in chunks] == ["sim", " sim sim sim sim", " sim"]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "length"]
    assert times[0] - start >= TTFT_S
    assert times[1] - start >= TTFT_S + 4 * TPOT_S


def test_unknown_model_is_an_openai_404(sim: SimServer) -> None:
    r = httpx.post(
        f"{sim.url}/v1/chat/completions",
        json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 404
    error = r.json()["error"]
    assert error["code"] == 404 and "nope" in error["message"] and error["type"] == "NotFoundError"


def test_bad_requests_are_400(sim: SimServer) -> None:
    r = httpx.post(f"{sim.url}/v1/chat/completions", content=b"{not json")
    assert r.status_code == 400
    r = httpx.post(
        f"{sim.url}/v1/completions", json={"model": "sim-model", "prompt": "x", "max_tokens": 5000}
    )
    assert r.status_code == 400 and "maximum context length is 1000" in r.json()["error"]["message"]
    r = httpx.post(
        f"{sim.url}/v1/completions", json={"model": "sim-model", "prompt": "x", "stream": True, "stream_interval": 0}
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream_interval"


def test_stats_count_requests_and_report_visible_devices(sim: SimServer) -> None:
    before = _stats(sim)
    for _ in range(3):
        httpx.post(
            f"{sim.url}/v1/completions",
            json={"model": "sim-model", "prompt": "x", "max_tokens": 1},
            timeout=30,
        )
    httpx.post(f"{sim.url}/v1/completions", json={"model": "other", "prompt": "x"})
    after = _stats(sim)
    assert after["requests"] - before["requests"] == 3
    assert after["completed"] - before["completed"] == 3
    assert after["rejected"] - before["rejected"] == 1
    assert after["in_flight"] == 0
    assert after["visible_devices"] == {"ASCEND_RT_VISIBLE_DEVICES": "2,3", "CUDA_VISIBLE_DEVICES": None}


def test_start_log_says_simulator(sim: SimServer) -> None:
    assert sim.proc.stdout is not None
    first_line = sim.proc.stdout.readline().decode()
    assert "SIMULATOR" in first_line and "sim-model" in first_line


def test_batch_slots_make_requests_wait_their_turn() -> None:
    """With 2 slots, 4 simultaneous requests generate 2 at a time: the last two wait out a whole generation."""
    one_generation_s = TTFT_S + (OUTPUT_TOKENS - 1) * TPOT_S

    async def timed(client: httpx.AsyncClient, i: int) -> float:
        t0 = time.perf_counter()
        body = {"model": "sim-model", "messages": [{"role": "user", "content": f"q{i}"}], "stream": i % 2 == 0}
        response = await client.post("/v1/chat/completions", json=body)
        await response.aread()
        assert response.status_code == 200
        return time.perf_counter() - t0

    async def four(url: str) -> list[float]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            return sorted(await asyncio.gather(*(timed(client, i) for i in range(4))))

    with running_sim("--max-num-seqs", "2") as slotted:
        latencies = asyncio.run(four(slotted.url))
        stats = _stats(slotted)
        card = httpx.get(f"{slotted.url}/v1/models").json()["data"][0]
    assert stats["peak_generating"] == 2
    assert stats["completed"] == 4 and stats["in_flight"] == 0
    assert all(t >= 2 * one_generation_s for t in latencies[2:]), latencies
    assert card["metadata"]["max_num_seqs"] == 2


def test_with_an_engine_key_every_route_but_health_needs_it() -> None:
    body = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}]}
    with running_sim(key="engine-key-1") as server:
        routes = [("GET", "/v1/models", None), ("POST", "/v1/chat/completions", body), ("GET", "/sim/stats", None)]
        for method, path, payload in routes:
            for header in (None, "Bearer wrong", "Basic engine-key-1", "Bearer engine-key-12"):
                headers = {"Authorization": header} if header else {}
                answer = httpx.request(method, server.url + path, json=payload, headers=headers, timeout=10)
                assert answer.status_code == 401, (path, header)
                assert answer.json()["error"]["type"] == "authentication_error"
            good = httpx.request(method, server.url + path, json=payload, timeout=10,
                                 headers={"Authorization": "Bearer engine-key-1"})
            assert good.status_code == 200, (path, good.text)
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200  # Serve's probe needs no key
