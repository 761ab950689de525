"""Fuzzing the answers, as test_fuzz.py fuzzes the requests: a real HTTP server answers each request with one of
≥ 1,000 generated malformed streams and bodies (wrong shapes, wrong types, truncated UTF-8, huge chunks, bad
statuses and headers, cut connections), and real Ray client actors evaluate them. No client actor may die: every
sample ends ok or failed, a failure names its reason, and the run completes."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import web

from eval_jobs.records import SampleKey, SampleRequest, SampleResult
from eval_jobs.work import ClientSettings, distribute

N_CASES = 1200
Case = Callable[[web.Request], Any]


def good_chunk(text: str = "ok") -> dict[str, Any]:
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text},
                                                            "finish_reason": None}]}


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 4 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1.5, 2**70, float("1e308")])
    if kind == 3:
        return rng.choice(["", "x", "\ud7ff", "é" * 10, "\x00"])
    if kind == 4:
        return rng.choice([[], {}, "choices", "delta"])
    if kind == 5:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(3))]
    keys = ["choices", "delta", "content", "reasoning_content", "reasoning", "usage", "index", "finish_reason",
            "prompt_tokens", "completion_tokens", "error", "message"]
    return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randrange(1, 4))}


def shaped(rng: random.Random) -> Any:
    """A chunk of the right outline with one part of the wrong type."""
    wrong = random_json(rng)
    return rng.choice([
        {"choices": wrong},
        {"choices": [wrong]},
        {"choices": [{"index": 0, "delta": wrong}]},
        {"choices": [{"index": 0, "delta": {"content": wrong}}]},
        {"choices": [{"index": 0, "delta": {"reasoning_content": wrong}}]},
        {"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": wrong}]},
        {"choices": [{"index": wrong, "delta": {"content": "x"}}]},
        {"choices": [], "usage": wrong},
        {"choices": [], "usage": {"prompt_tokens": wrong, "completion_tokens": wrong}},
        {"error": wrong},
        wrong,
    ])


def make_case(rng: random.Random, i: int) -> tuple[str, bytes, int, dict[str, str], bool]:
    """(label, raw body, status, headers, cut the connection after the body)."""
    done = b"data: [DONE]\n\n"
    sse = {"Content-Type": "text/event-stream"}
    kind = i % 12
    if kind == 0:  # the case and its relatives: valid JSON of the wrong shape
        events = [good_chunk(), shaped(rng), good_chunk()]
        return "shape", b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + done, 200, sse, False
    if kind == 1:  # random JSON values as events
        events = [random_json(rng) for _ in range(rng.randrange(1, 5))]
        return "random", b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + done, 200, sse, False
    if kind == 2:  # truncated or invalid UTF-8 inside an event, and at the end of the stream
        text = json.dumps(good_chunk("答案是四十二")).encode()
        cut = rng.randrange(1, len(text))
        tail = rng.choice([b"", done, b"\xe4\xb8"])
        return "utf8", b"data: " + text[:cut] + rng.choice([b"\xe4\xb8", b"\xff\xfe", b"\xc3"]) + b"\n\n" + tail, \
            200, sse, False
    if kind == 3:  # random bytes
        return "bytes", rng.randbytes(rng.randrange(1, 4096)), 200, sse, rng.random() < 0.5
    if kind == 4:  # a huge line without a newline, or a huge valid chunk
        if i % 48 == 4:
            return "huge-line", b"data: " + b"x" * (9 * 1024 * 1024), 200, sse, False
        big = json.dumps(good_chunk("y" * rng.randrange(100_000, 1_000_000))).encode()
        return "huge-chunk", b"data: " + big + b"\n\n" + done, 200, sse, False
    if kind == 5:  # JSON nested deeper than any parser goes
        return "deep", b"data: " + deep(rng.choice([1000, 100_000])).encode() + b"\n\n" + done, 200, sse, False
    if kind == 6:  # error statuses with bodies of every sort
        status = rng.choice([400, 401, 404, 413, 422, 429, 500, 502, 503])
        body = rng.choice([json.dumps(random_json(rng)).encode(), rng.randbytes(200), deep(100_000).encode(),
                           b"x" * (3 * 1024 * 1024), b"", json.dumps({"error": shaped(rng)}).encode()])
        headers = {"Content-Type": rng.choice(["application/json", "text/plain", "text/event-stream"]),
                   "Retry-After": rng.choice(["0", "nan", "-5", "inf", "soon", "1e309"])}
        return "status", body, status, headers, False
    if kind == 7:  # 200 but not a stream
        body = json.dumps({"choices": [{"message": {"content": "42"}}]}).encode()
        return "not-sse", body, 200, {"Content-Type": "application/json"}, False
    if kind == 8:  # a stream cut mid-event, the connection dropped
        text = b"data: " + json.dumps(good_chunk()).encode() + b"\n\n"
        return "cut", text + text[: rng.randrange(1, len(text))], 200, sse, True
    if kind == 9:  # wrong line endings and field names
        return "lines", rng.choice([b"data:" + json.dumps(good_chunk()).encode() + b"\r\r" + done,
                                    b"event: x\nid: 3\nretry: x\n\n" + done, b"data\n\ndata:\n\n" + done,
                                    b"\r\n\r\n\r\n"]), 200, sse, False
    if kind == 10:  # usage of the wrong types with an otherwise fine answer
        usage = {"prompt_tokens": random_json(rng), "completion_tokens": rng.choice(["3", 2.5, -1, True, None])}
        events = [good_chunk(), {"choices": [], "usage": usage}]
        return "usage", b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + done, 200, sse, False
    # a well-formed answer now and then: the fuzz must not fail what is right
    return "good", b"data: " + json.dumps(good_chunk("42")).encode() + b"\n\n" + done, 200, sse, False


class FuzzServer:
    """Answers request i (its user message says which) with case i, in randomly sized pieces."""

    def __init__(self, cases: list[tuple[str, bytes, int, dict[str, str], bool]]) -> None:
        self.cases = cases
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        i = int(body["messages"][0]["content"])
        _, raw, status, headers, cut = self.cases[i]
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        rng = random.Random(i)
        pos = 0
        while pos < len(raw):
            step = rng.choice([1, 7, 100, 4096, len(raw)] if len(raw) < 65536 else [4096, 65536, len(raw)])
            await response.write(raw[pos : pos + step])
            pos += step
        if cut and request.transport is not None:
            request.transport.close()
            return response
        await response.write_eof()
        return response

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.handle)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        self._loop.run_until_complete(runner.setup())
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self._loop.run_until_complete(web.SockSite(runner, sock).start())
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._runner = runner
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def __enter__(self) -> FuzzServer:
        self._thread.start()
        self._ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)


def test_malformed_answers_fail_their_samples_and_never_a_client(ray_cluster):
    rng = random.Random(15)
    cases = [make_case(rng, i) for i in range(N_CASES)]
    assert len(cases) >= 1000
    with FuzzServer(cases) as server:
        requests = [SampleRequest(key=SampleKey("fuzz", "answers", i, 0), endpoint=server.url,
                                  body={"model": "fuzz", "messages": [{"role": "user", "content": str(i)}]})
                    for i in range(N_CASES)]
        settings = ClientSettings(concurrency=16, lease_size=8, timeout_s=10, first_token_timeout_s=10,
                                  max_retries=0, backoff_s=0)
        results: list[SampleResult] = []
        restarts = distribute(requests, settings, 2, results.extend)
    assert restarts == 0  # no client actor died
    assert sorted(r.index for r in results) == list(range(N_CASES))  # the run completed, each sample once
    by_label: dict[str, set[str]] = {}
    for r in results:
        assert r.status in ("ok", "failed")
        if r.status == "failed":
            assert r.error and "internal error" not in r.error, (cases[r.index][0], r.error)  # a named reason
        by_label.setdefault(cases[r.index][0], set()).add(r.status)
    assert by_label["good"] == {"ok"}
    for label in ("utf8", "deep", "status", "not-sse", "cut", "huge-line"):
        assert by_label[label] == {"failed"}, label
    assert "failed" in by_label["shape"]
