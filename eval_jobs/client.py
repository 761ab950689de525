"""The transport: one streamed chat completion (or completion) per sample, with bounds on silence, and retries.

    async with Transports(concurrency=32) as transports:
        result = await send_chat(transports, request, bounds=Bounds(idle_s=300, first_token_s=1800),
                                 max_retries=3, backoff_s=1.0)
        # result.status is "ok" or "failed"; a per-sample failure is a record, never an exception

A request goes where its `endpoint` says: an `http://` URL (any OpenAI-compatible server, through httpx), or
`serve:engine:NAME`, the cluster's own engine supervisors through Serve deployment handles. The second is the
data plane of jobs that evaluate this cluster's checkpoints: Ray routes each call to a replica on any host, and no
process is shared by all replicas (the HTTP endpoint funnels every request through one proxy and one ingress, and
its loopback address exists only on the head). Both carry the engine's own bytes, so the stream is read the same
way. A body with `messages` goes to /v1/chat/completions, one with `prompt` (AISBench's completions model configs)
to /v1/completions, on either transport. Responses are streamed (SSE) so time to first token can be measured;
reasoning content is kept apart from the answer, as vLLM sends it (`delta.reasoning_content`, or `delta.reasoning` in newer versions).

Timeouts bound silence, not length (as the OpenAI and httpx clients read a timeout): an attempt ends when no
first answer data came within `first_token_s` of sending (a request queued behind a full batch, a long prefill),
or, after that, when no answer data came for `idle_s`; a total cap (`total_s`) is optional. A 32k-token answer
that streams steadily for an hour is never cut. Every answer is parsed defensively: whatever a server sends
(wrong shapes or types, truncated UTF-8, huge lines) ends as a failed sample naming the reason, never as an
exception out of `send_chat`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import math
import random
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import httpx

from eval_jobs.multimodal import shortened
from eval_jobs.records import SampleRequest, SampleResult
from eval_jobs.sse import (
    MAX_ERROR_CHARS,
    Answer,
    AttemptError,
    as_bytes,
    consume,
    error_message,
    lines,
    read_error_body,
)

SERVE_SCHEME = "serve:"
CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
# Longest single backoff sleep, whatever the attempt number or the server's Retry-After says.
MAX_BACKOFF_S = 60.0
# Connecting is bounded on its own: a refused or unroutable address should be retried soon, not after the
# first-token wait.
CONNECT_TIMEOUT_S = 30.0
# How long a client waits for a Serve handle to learn its replicas before the first request (`Transports.warm_up`).
WARM_UP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Bounds:
    """How long one attempt may stay silent. Each is a bound on waiting, never on an answer that is progressing."""

    idle_s: float  # no answer data for this long, after the first, ends the attempt (eval.timeout_s)
    first_token_s: float | None = None  # from sending to the first answer data (None: idle_s)
    total_s: float | None = None  # optional cap on one attempt, end to end (eval.max_request_s)

    @property
    def first_s(self) -> float:
        return self.first_token_s if self.first_token_s is not None else self.idle_s


def serve_endpoint(app_name: str) -> str:
    """The `endpoint` of requests sent through Serve handles to the engine supervisors of app `app_name`."""
    return SERVE_SCHEME + app_name


def make_client(concurrency: int) -> httpx.AsyncClient:
    """An AsyncClient whose connection pool holds `concurrency` connections.

    Callers keep at most `concurrency` requests in flight on it (a semaphore); a request waiting for a pooled
    connection would spend its timeout waiting. `trust_env=False`: proxy variables in the environment must not
    reroute requests meant for the (usually loopback) endpoint.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(limits=limits, trust_env=False, follow_redirects=False)


def api_path(body: dict[str, Any]) -> str:
    """The route a body goes to: a `prompt` (AISBench's completions model configs, vllm_api_general) to
    /v1/completions, `messages` to /v1/chat/completions."""
    return COMPLETIONS_PATH if "prompt" in body and "messages" not in body else CHAT_PATH


def chat_url(endpoint: str, path: str = CHAT_PATH) -> str:
    """`{endpoint}{path}` (default /v1/chat/completions), also accepting an endpoint given with its `/v1` suffix."""
    base = endpoint.rstrip("/")
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    return f"{base}{path}"


@dataclass
class Reply:
    """The head of one answer and its body, as raw bytes in the order they came."""

    status: int
    content_type: str
    retry_after: str | None
    chunks: AsyncIterator[bytes]


class Transports:
    """Where requests go: one httpx pool for HTTP endpoints, one cached Serve handle per engine app."""

    def __init__(self, concurrency: int, api_key: str | None = None, *, router_on_this_loop: bool = False) -> None:
        self._http = make_client(concurrency)
        self._api_key = api_key
        self._handles: dict[str, Any] = {}
        # Serve handles' routers on the caller's event loop: only for a loop that lives as long as the process (a
        # client actor's). Serve caches handles per process and shuts their routers down on that loop.
        self._router_on_this_loop = router_on_this_loop

    async def __aenter__(self) -> Transports:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    @contextlib.asynccontextmanager
    async def post(self, endpoint: str, body: dict[str, Any]) -> AsyncIterator[Reply]:
        """POST a chat or completions body to `endpoint` (its route by `api_path`); the reply is open inside the
        block, closed after it. Only connecting has a timeout here: how long the answer may stay silent is `send_chat`'s to bound, the same on every transport."""
        if endpoint.startswith(SERVE_SCHEME):
            async with self._post_serve(endpoint.removeprefix(SERVE_SCHEME), body) as reply:
                yield reply
            return
        headers = {"Accept": "text/event-stream"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        url = chat_url(endpoint, api_path(body))
        # No read timeout: httpx's applies per read, so it can neither tell a steady stream from a stuck one
        # before the first token, nor name which bound ended an attempt.
        timeout = httpx.Timeout(None, connect=CONNECT_TIMEOUT_S)
        try:
            async with self._http.stream("POST", url, json=body, headers=headers, timeout=timeout) as resp:
                yield Reply(resp.status_code, resp.headers.get("content-type", ""), resp.headers.get("retry-after"),
                            resp.aiter_bytes())
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise AttemptError(f"bad endpoint URL {url!r}: {exc}", retryable=False) from None
        except httpx.RequestError as exc:
            # Connection refused/reset or not made in time, peer closed mid-body, protocol errors: the replica may
            # be restarting.
            raise AttemptError(f"{type(exc).__name__}: {str(exc) or 'no detail'}", retryable=True) from None

    async def warm_up(self, endpoints: Iterable[str], timeout_s: float = WARM_UP_TIMEOUT_S) -> None:
        """Have the Serve handle of every `serve:` endpoint know its replicas before the first sample is sent. A
        new handle's router learns them from Serve's controller only after its first call, and until then every
        request waits; filling a few hundred slots at once then stalls the start of a run. Past `timeout_s` (the
        app is still starting), requests wait for the replicas as they would have."""
        handles = []
        for app_name in {e.removeprefix(SERVE_SCHEME) for e in endpoints if e.startswith(SERVE_SCHEME)}:
            try:
                handles.append(self._handle(app_name))
            except Exception:  # no such app (any more): each request fails with Serve's reason, as without warm-up
                continue
        deadline = time.monotonic() + timeout_s
        while not all(h.running_replicas_populated() for h in handles) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def _handle(self, app_name: str) -> Any:
        from ray import serve

        from serve_apps.ingress import ENGINE_DEPLOYMENT

        handle = self._handles.get(app_name)
        if handle is None:
            handle = serve.get_deployment_handle(ENGINE_DEPLOYMENT, app_name)
            # Serve's handles start their router on the first call; this is that call, made early. In a client
            # actor the router runs on its own event loop: in a thread of its own (Serve's default) every request
            # would cross threads twice, CPU a client with hundreds in flight does not have to spend.
            handle._init(_run_router_in_separate_loop=not self._router_on_this_loop)
            handle = self._handles[app_name] = handle.options(stream=True)
        return handle

    @contextlib.asynccontextmanager
    async def _post_serve(self, app_name: str, body: dict[str, Any]) -> AsyncIterator[Reply]:
        stream = self._handle(app_name).forward.remote("POST", api_path(body), json.dumps(body).encode())
        try:
            head = await anext(stream)
        except Exception as exc:
            stream.cancel()
            raise _serve_error(exc) from None
        if not isinstance(head, dict) or not isinstance(head.get("status"), int):
            stream.cancel()
            raise AttemptError(f"engine supervisor sent no head: {str(head)[:200]!r}", retryable=True)

        async def chunks() -> AsyncIterator[bytes]:
            if head.get("body"):
                yield head["body"]
            try:
                async for chunk in stream:
                    yield chunk
            except Exception as exc:
                raise _serve_error(exc) from None

        try:
            yield Reply(head["status"], head.get("content_type", ""), None, chunks())
        finally:
            stream.cancel()  # no-op once the stream is done; stops the engine's work when we gave up early


def _serve_error(exc: Exception) -> AttemptError:
    """A failed handle call: a replica that died or is being replaced (ActorDiedError), the engine behind it
    unreachable, or Serve shedding load. Each may succeed on another attempt, on another replica."""
    first_line = (str(exc).strip().splitlines() or ["no detail"])[0]
    return AttemptError(f"{type(exc).__name__}: {first_line[:MAX_ERROR_CHARS]}", retryable=True)


async def send_chat(
    transports: Transports,
    request: SampleRequest,
    *,
    bounds: Bounds,
    max_retries: int,
    backoff_s: float,
) -> SampleResult:
    """Send one sample as a streamed chat completion (a completion when its body has a `prompt`); return its
    record, ok or failed (never raise for it).

    Retried (up to `max_retries` times after the first attempt, exponential backoff with jitter): connection
    and read errors, 429, 5xx (a killed Serve replica answers 500), a replica that died under a handle call,
    streams that end early or carry invalid or malformed events or an error event, and the two silence bounds
    (no first token within `bounds.first_s`, no data for `bounds.idle_s`: a stuck or vanished replica, which
    another attempt may not meet). Other 4xx and the total cap `bounds.total_s` are final at once (a retry would
    be cut at the same length). A retry starts the answer over: what the failed attempt generated is lost. TTFT
    and latency are those of the successful attempt; `started_at` is when the first attempt was sent.
    """
    body = dict(request.body)
    body["stream"] = True
    # Ask for a final usage chunk, keeping any other stream options the caller set.
    options = body.get("stream_options")
    body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}

    started_at = time.time()
    attempts = 0
    error, retryable = "", True
    stream: Answer | None = None
    while True:
        attempts += 1
        try:
            stream = await _bounded(transports, request.endpoint, body, bounds)
            break
        except AttemptError as exc:
            error, retryable, retry_after = str(exc), exc.retryable, exc.retry_after_s
        except Exception as exc:  # a bug or an answer no check foresaw: a failed sample, never a dead client
            error, retryable, retry_after = f"internal error ({type(exc).__name__}): {exc}"[:MAX_ERROR_CHARS], False, None
        if not retryable or attempts > max_retries:
            break
        await asyncio.sleep(_backoff(attempts, backoff_s, retry_after))

    key = request.key
    common: dict[str, Any] = dict(
        model=key.model,
        dataset=key.dataset,
        index=key.index,
        repeat=key.repeat,
        endpoint=request.endpoint,
        prompt=_sent_input(request.body),
        attempts=attempts,
        started_at=started_at,
        finished_at=time.time(),
        fingerprint=request.fingerprint,
    )
    if stream is None:
        error += f" (gave up after {attempts} attempts)" if retryable else " (not retried)"
        return SampleResult(status="failed", error=error, **common)
    return SampleResult(
        status="ok",
        response="".join(stream.content),
        reasoning_content="".join(stream.reasoning) if stream.reasoning else None,
        finish_reason=stream.finish_reason,
        prompt_tokens=stream.prompt_tokens,
        completion_tokens=stream.completion_tokens,
        reasoning_tokens=stream.reasoning_tokens,
        ttft_s=stream.ttft_s,
        latency_s=stream.latency_s,
        **common,
    )


def failed_result(request: SampleRequest, error: str, attempts: int = 1) -> SampleResult:
    """A failed record for `request` built from what is known before any answer (the client's last guard)."""
    key = request.key
    now = time.time()
    return SampleResult(model=key.model, dataset=key.dataset, index=key.index, repeat=key.repeat, status="failed",
                        error=error[:MAX_ERROR_CHARS], endpoint=request.endpoint,
                        prompt=_sent_input(request.body), attempts=attempts, started_at=now,
                        finished_at=now, fingerprint=request.fingerprint)


def _sent_input(body: dict[str, Any]) -> list[dict[str, Any]] | str:
    """What the request asked: its chat messages, or its completions prompt."""
    value = body.get("messages", body.get("prompt"))
    return shortened(value) if isinstance(value, (list, str)) else []


async def _bounded(transports: Transports, endpoint: str, body: dict[str, Any], bounds: Bounds) -> Answer:
    """One attempt, watched: it ends when the bound that applies now passes (the first-token wait until the first
    answer data, then the idle bound from the latest data, and the total cap if set), naming that bound."""
    t0 = time.perf_counter()
    out = Answer()
    task = asyncio.ensure_future(_attempt(transports, endpoint, body, out, t0))
    try:
        while True:
            deadline, reason, retryable = _deadline(out, t0, bounds)
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise AttemptError(reason, retryable=retryable)
            done, _ = await asyncio.wait({task}, timeout=remaining)
            if done:
                return task.result()
    finally:
        if not task.done():
            task.cancel()  # closes the connection or cancels the handle call: the engine stops generating
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _deadline(out: Answer, t0: float, bounds: Bounds) -> tuple[float, str, bool]:
    """(when, why, retryable) of the bound that ends the attempt next."""
    if out.last_data_at is None:
        deadline = t0 + bounds.first_s
        reason = f"no first token within {bounds.first_s:g} s (eval.first_token_timeout_s)"
    else:
        deadline = out.last_data_at + bounds.idle_s
        chars = sum(map(len, out.content)) + sum(map(len, out.reasoning))
        reason = (f"stream idle for {bounds.idle_s:g} s after {out.events} events, {chars} chars "
                  "(eval.timeout_s, the idle bound)")
    if bounds.total_s is not None and t0 + bounds.total_s < deadline:
        chars = sum(map(len, out.content)) + sum(map(len, out.reasoning))
        return (t0 + bounds.total_s, f"answer not finished within {bounds.total_s:g} s after {chars} chars "
                "(eval.max_request_s, the total cap)", False)
    return deadline, reason, True


async def _attempt(transports: Transports, endpoint: str, body: dict[str, Any], out: Answer, t0: float) -> Answer:
    """One POST, read to the end of its SSE stream into `out`. Raises AttemptError on failure."""
    async with transports.post(endpoint, body) as reply:
        if reply.status != 200:
            raise AttemptError(
                f"HTTP {reply.status}: {error_message(await read_error_body(reply.chunks))}",
                retryable=reply.status == 429 or reply.status >= 500,
                retry_after_s=_retry_after(reply.retry_after),
            )
        done = False
        async for line in lines(reply.chunks):
            # SSE: "data: <json>" events separated by blank lines; comments (":") and other fields ignored.
            if not line.startswith("data:"):
                continue
            data = line[len("data:") :].strip()
            if data == "[DONE]":
                done = True
                break
            try:
                chunk = json.loads(data)
            except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than the parser goes
                raise AttemptError(f"invalid JSON in stream: {data[:200]!r}", retryable=True) from None
            if not isinstance(chunk, dict):
                raise AttemptError(f"unexpected stream event: {data[:200]!r}", retryable=True)
            consume(chunk, out, t0)
        if not done:
            raise AttemptError("stream ended without 'data: [DONE]' (truncated response)", retryable=True)
    out.latency_s = time.perf_counter() - t0  # ttft_s stays None if no token came (e.g. an empty answer)
    return out


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is rare on APIs and ignored)."""
    try:
        seconds = float(value) if value else None
    except ValueError:
        return None
    return None if seconds is None or math.isnan(seconds) else max(0.0, seconds)


async def post_whole_answer(transports: Transports, endpoint: str, body: dict[str, Any], *, limit_s: float,
                            bound: str, retryable_on_timeout: bool, max_bytes: int) -> dict[str, Any]:
    """A non-streamed request's JSON answer, read whole (at most `max_bytes`) within `limit_s`: a whole answer
    comes at once, so only its total time can be bounded (`bound` names the setting in the error, as `send_chat`
    names its bounds). Failures are AttemptErrors, retryable as `send_chat`'s are (429 and 5xx, bad JSON)."""
    async def attempt() -> dict[str, Any]:
        async with transports.post(endpoint, copy.deepcopy(body)) as reply:
            if reply.status != 200:
                raise AttemptError(f"HTTP {reply.status}: {error_message(await read_error_body(reply.chunks))}",
                                   retryable=reply.status == 429 or reply.status >= 500)
            chunks, size = [], 0
            async for chunk in reply.chunks:
                chunks.append(as_bytes(chunk))
                size += len(chunks[-1])
                if size > max_bytes:
                    raise AttemptError(f"answer larger than {max_bytes} bytes", retryable=False)
        raw = b"".join(chunks)
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            raise AttemptError(f"answer is not JSON: {raw[:200]!r}", retryable=True) from None

    try:
        return await asyncio.wait_for(attempt(), timeout=limit_s)
    except TimeoutError:
        raise AttemptError(f"no answer within {limit_s:g} s ({bound})", retryable=retryable_on_timeout) from None


def _backoff(attempt: int, backoff_s: float, retry_after_s: float | None) -> float:
    """Exponential backoff with jitter (50–100% of the step), so clients retrying together spread out."""
    step = backoff_s * 2 ** (attempt - 1)
    delay = step * random.uniform(0.5, 1.0)
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return min(delay, MAX_BACKOFF_S)
