"""The transport against real HTTP servers on loopback that misbehave on purpose (fault injectors)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from eval_jobs.client import Bounds, Transports, chat_url, make_client, send_chat
from eval_jobs.records import SampleKey, SampleRequest, SampleResult

# Answers the n-th request (counting from 1).
Handler = Callable[[web.Request, int], Awaitable[web.StreamResponse]]
MESSAGES = [{"role": "user", "content": "What is 6 * 7?"}]


class Server:
    """A scripted OpenAI-ish server: `handler(request, n)` answers the n-th request (from 1); keeps bodies."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(await request.json())
        self.headers.append(dict(request.headers))
        return await self.handler(request, len(self.bodies))


@asynccontextmanager
async def serving(server: Server) -> AsyncIterator[str]:
    """Run `server` on a free loopback port; yields its base URL."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", server.handle)
    # A short shutdown timeout cancels handlers that never answer, so each test ends promptly.
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()


def chunk(content: str | None = None, *, finish: str | None = None, **delta: str) -> dict[str, Any]:
    if content is not None:
        delta["content"] = content
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {"object": "chat.completion.chunk", "choices": [choice]}


USAGE = {
    "object": "chat.completion.chunk",
    "choices": [],
    "usage": {"prompt_tokens": 11, "completion_tokens": 3},
}


def good_events(reasoning_key: str = "reasoning_content") -> list[dict[str, Any]]:
    return [
        chunk(role="assistant", content=""),
        chunk(**{reasoning_key: "6*7 is 42"}),
        chunk("4"),
        chunk("2"),
        chunk("", finish="stop"),
        USAGE,
    ]


async def sse(request: web.Request, events: list[Any], *, done: bool = True) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for event in events:
        data = event if isinstance(event, str) else json.dumps(event)
        await resp.write(f"data: {data}\n\n".encode())
    if done:
        await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


def error(status: int, message: str, **headers: str) -> web.Response:
    body = {"error": {"message": message, "type": "x", "param": None, "code": status}}
    return web.json_response(body, status=status, headers=headers)


def request_for(endpoint: str, **body: Any) -> SampleRequest:
    return SampleRequest(
        key=SampleKey("tiny", "demo", 3, 1),
        endpoint=endpoint,
        body={"model": "tiny", "messages": MESSAGES, "max_tokens": 16, **body},
    )


def run(
    server: Server,
    *,
    timeout_s: float = 10.0,
    max_retries: int = 3,
    api_key: str | None = None,
    body: dict[str, Any] | None = None,
) -> SampleResult:
    """Serve `server`, send one sample to it (short backoff), return the record."""

    async def main() -> SampleResult:
        async with serving(server) as url, Transports(4, api_key) as transports:
            request = request_for(url, **(body or {}))
            return await send_chat(transports, request, bounds=Bounds(idle_s=timeout_s), max_retries=max_retries,
                                   backoff_s=0.01)

    return asyncio.run(main())


@pytest.mark.parametrize("reasoning_key", ["reasoning_content", "reasoning"])
def test_streamed_answer_with_reasoning_and_usage(reasoning_key: str) -> None:
    server = Server(lambda req, n: sse(req, good_events(reasoning_key)))
    before = time.time()
    res = run(server, api_key="sk-test", body={"stream_options": {"continuous_usage_stats": False}})

    assert res.status == "ok" and res.error is None
    assert (res.model, res.dataset, res.index, res.repeat) == ("tiny", "demo", 3, 1)
    assert res.response == "42"
    assert res.reasoning_content == "6*7 is 42"
    assert res.finish_reason == "stop"
    assert (res.prompt_tokens, res.completion_tokens) == (11, 3)
    assert res.attempts == 1
    assert res.prompt == MESSAGES
    assert res.ttft_s is not None and res.latency_s is not None and 0 <= res.ttft_s <= res.latency_s
    assert res.finished_at is not None and before <= res.started_at <= res.finished_at
    # What went over the wire: streaming with a usage chunk, the caller's other options kept, key as Bearer.
    sent = server.bodies[0]
    assert sent["stream"] is True
    assert sent["stream_options"] == {"continuous_usage_stats": False, "include_usage": True}
    assert sent["messages"] == MESSAGES and sent["max_tokens"] == 16
    assert server.headers[0]["Authorization"] == "Bearer sk-test"


def test_500_twice_then_ok_is_retried() -> None:
    async def handler(req: web.Request, n: int) -> web.StreamResponse:
        return error(500, "replica died") if n <= 2 else await sse(req, good_events())

    server = Server(handler)
    res = run(server)
    assert res.status == "ok" and res.response == "42"
    assert res.attempts == 3 == len(server.bodies)


def test_connection_dropped_mid_stream_then_ok() -> None:
    async def handler(req: web.Request, n: int) -> web.StreamResponse:
        if n > 1:
            return await sse(req, good_events())
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(req)
        await resp.write(f"data: {json.dumps(chunk('partial '))}\n\n".encode())
        assert req.transport is not None
        req.transport.close()  # the replica is killed mid-answer
        return resp

    server = Server(handler)
    res = run(server)
    assert res.status == "ok"
    assert res.response == "42"  # nothing of the dropped attempt leaks into the answer
    assert res.attempts == 2 == len(server.bodies)


def test_429_then_ok_is_retried() -> None:
    async def handler(req: web.Request, n: int) -> web.StreamResponse:
        return error(429, "slow down", **{"Retry-After": "0"}) if n == 1 else await sse(req, good_events())

    res = run(Server(handler))
    assert res.status == "ok" and res.attempts == 2


def test_400_is_not_retried_and_keeps_the_servers_message() -> None:
    server = Server(lambda req, n: asyncio.sleep(0, error(400, "maximum context length is 512 tokens")))
    res = run(server)
    assert res.status == "failed"
    assert res.attempts == 1 == len(server.bodies)
    assert res.error is not None and "HTTP 400" in res.error and "not retried" in res.error
    assert "maximum context length is 512 tokens" in res.error
    assert res.response == "" and res.ttft_s is None


async def never_answer(req: web.Request, n: int) -> web.StreamResponse:
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


async def trickle_forever(req: web.Request, n: int) -> web.StreamResponse:
    """Headers, then an SSE comment every 50 ms and never a token: per-read timeouts alone never fire."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(req)
    while True:
        await resp.write(b": keep-alive\n\n")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("handler", [never_answer, trickle_forever])
def test_server_that_never_answers_ends_within_the_timeout_bound(handler: Handler) -> None:
    server = Server(handler)
    timeout_s, max_retries = 0.5, 1
    start = time.monotonic()
    res = run(server, timeout_s=timeout_s, max_retries=max_retries)
    elapsed = time.monotonic() - start
    assert res.status == "failed"
    # Keep-alive comments are not answer data: they hold off no bound.
    assert res.error is not None and "no first token within 0.5 s" in res.error
    assert res.attempts == 2 == len(server.bodies)
    # Bound: every attempt's timeout plus backoff, with generous slack for a loaded machine.
    assert elapsed < (max_retries + 1) * timeout_s + 5


@pytest.mark.parametrize(
    ("events", "done", "reason"),
    [
        (["{oops"], True, "invalid JSON in stream"),
        ([chunk("4"), chunk("2")], False, "without 'data: [DONE]'"),
        ([chunk("4"), {"error": {"message": "engine crashed", "code": 500}}], True, "engine crashed"),
    ],
    ids=["invalid-json", "missing-done", "error-event"],
)
def test_bad_streams_fail_after_all_retries(events: list[Any], done: bool, reason: str) -> None:
    server = Server(lambda req, n: sse(req, events, done=done))
    res = run(server, max_retries=2)
    assert res.status == "failed"
    assert res.error is not None and reason in res.error and "gave up after 3 attempts" in res.error
    assert res.attempts == 3 == len(server.bodies)


def test_nothing_listening_fails_after_retries() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # a port that was free a moment ago: connections are refused

    async def main() -> SampleResult:
        async with Transports(1) as transports:
            req = request_for(f"http://127.0.0.1:{port}")
            return await send_chat(transports, req, bounds=Bounds(idle_s=5), max_retries=2, backoff_s=0.01)

    res = asyncio.run(main())
    assert res.status == "failed" and res.attempts == 3
    assert res.error is not None and "ConnectError" in res.error


def test_chat_url_and_client_limits() -> None:
    assert chat_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000/v1/chat/completions"
    assert chat_url("http://127.0.0.1:8000/v1/") == "http://127.0.0.1:8000/v1/chat/completions"
    with pytest.raises(ValueError):
        make_client(0)
