"""The transport: one streamed chat completion per sample, with a finite timeout and retries.

    async with Transports(concurrency=32) as transports:
        result = await send_chat(transports, request, timeout_s=600, max_retries=3, backoff_s=1.0)
        # result.status is "ok" or "failed"; a per-sample failure is a record, never an exception

A request goes where its `endpoint` says: an `http://` URL (any OpenAI-compatible server, through httpx), or
`serve:engine:NAME`, the cluster's own engine supervisors through Serve deployment handles. The second is the
data plane of jobs that evaluate this cluster's checkpoints: Ray routes each call to a replica on any host, and no
process is shared by all replicas (the HTTP endpoint funnels every request through one proxy and one ingress, and
its loopback address exists only on the head). Both carry the engine's own bytes, so the stream is read the same
way. Responses are streamed (SSE) so time to first token can be measured; reasoning content is kept apart from
the answer, as vLLM sends it (`delta.reasoning_content`, or `delta.reasoning` in newer versions).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from eval_jobs.records import SampleRequest, SampleResult

SERVE_SCHEME = "serve:"
CHAT_PATH = "/v1/chat/completions"
# Longest single backoff sleep, whatever the attempt number or the server's Retry-After says.
MAX_BACKOFF_S = 60.0
# How much of an error body is kept in a record's `error`.
MAX_ERROR_CHARS = 500


class AttemptError(Exception):
    """One attempt failed. `retryable` says whether another attempt may succeed."""

    def __init__(self, message: str, *, retryable: bool, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after_s = retry_after_s


@dataclass
class _Stream:
    """What one successful attempt gathered from the stream."""

    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_s: float | None = None
    latency_s: float | None = None


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


def chat_url(endpoint: str) -> str:
    """`{endpoint}/v1/chat/completions`, also accepting an endpoint given with its `/v1` suffix."""
    base = endpoint.rstrip("/")
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    return f"{base}{CHAT_PATH}"


@dataclass
class Reply:
    """The head of one answer and its body, as raw bytes in the order they came."""

    status: int
    content_type: str
    retry_after: str | None
    chunks: AsyncIterator[bytes]


class Transports:
    """Where requests go: one httpx pool for HTTP endpoints, one cached Serve handle per engine app."""

    def __init__(self, concurrency: int, api_key: str | None = None) -> None:
        self._http = make_client(concurrency)
        self._api_key = api_key
        self._handles: dict[str, Any] = {}

    async def __aenter__(self) -> Transports:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    @contextlib.asynccontextmanager
    async def post(self, endpoint: str, body: dict[str, Any], timeout_s: float) -> AsyncIterator[Reply]:
        """POST a chat body to `endpoint`; the reply is open inside the block, closed after it."""
        if endpoint.startswith(SERVE_SCHEME):
            async with self._post_serve(endpoint.removeprefix(SERVE_SCHEME), body) as reply:
                yield reply
            return
        headers = {"Accept": "text/event-stream"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        url = chat_url(endpoint)
        try:
            async with self._http.stream("POST", url, json=body, headers=headers, timeout=timeout_s) as resp:
                yield Reply(resp.status_code, resp.headers.get("content-type", ""), resp.headers.get("retry-after"),
                            resp.aiter_bytes())
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise AttemptError(f"bad endpoint URL {url!r}: {exc}", retryable=False) from None
        except httpx.TimeoutException:
            raise  # send_chat names it as a timeout
        except httpx.RequestError as exc:
            # Connection refused/reset, peer closed mid-body, protocol errors: the replica may be restarting.
            raise AttemptError(f"{type(exc).__name__}: {str(exc) or 'no detail'}", retryable=True) from None

    @contextlib.asynccontextmanager
    async def _post_serve(self, app_name: str, body: dict[str, Any]) -> AsyncIterator[Reply]:
        from ray import serve

        from serve_apps.ingress import ENGINE_DEPLOYMENT

        handle = self._handles.get(app_name)
        if handle is None:
            handle = serve.get_deployment_handle(ENGINE_DEPLOYMENT, app_name).options(stream=True)
            self._handles[app_name] = handle
        stream = handle.forward.remote("POST", CHAT_PATH, json.dumps(body).encode())
        try:
            head = await anext(stream)
        except Exception as exc:
            stream.cancel()
            raise _serve_error(exc) from None

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
    timeout_s: float,
    max_retries: int,
    backoff_s: float,
) -> SampleResult:
    """Send one sample as a streamed chat completion; return its record, ok or failed (never raise for it).

    Retried (up to `max_retries` times after the first attempt, exponential backoff with jitter): connection
    and read errors, timeouts, 429, 5xx (a killed Serve replica answers 500), a replica that died under a handle
    call, streams that end early or carry invalid JSON or an error event. Other 4xx are final at once. Each
    attempt is bounded by `timeout_s` in total, so a sample ends within (max_retries + 1) * timeout_s plus the
    backoff sleeps. TTFT and latency are those of the successful attempt; `started_at` is when the first attempt
    was sent.
    """
    body = dict(request.body)
    body["stream"] = True
    # Ask for a final usage chunk, keeping any other stream options the caller set.
    body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}

    started_at = time.time()
    attempts = 0
    error, retryable = "", True
    stream: _Stream | None = None
    while True:
        attempts += 1
        try:
            # wait_for bounds the whole attempt: httpx's own timeouts apply per read, and a server that
            # trickles bytes (or keeps a stream open without tokens) would otherwise hold the sample forever.
            attempt = _attempt(transports, request.endpoint, body, timeout_s)
            stream = await asyncio.wait_for(attempt, timeout=timeout_s)
            break
        except AttemptError as exc:
            error, retryable, retry_after = str(exc), exc.retryable, exc.retry_after_s
        except (asyncio.TimeoutError, httpx.TimeoutException):
            error, retryable, retry_after = f"timed out after {timeout_s:g} s", True, None
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
        prompt=request.body.get("messages", []),
        attempts=attempts,
        started_at=started_at,
        finished_at=time.time(),
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
        ttft_s=stream.ttft_s,
        latency_s=stream.latency_s,
        **common,
    )


async def _attempt(transports: Transports, endpoint: str, body: dict[str, Any], timeout_s: float) -> _Stream:
    """One POST, read to the end of its SSE stream. Raises AttemptError or a timeout on failure."""
    t0 = time.perf_counter()
    out = _Stream()
    async with transports.post(endpoint, body, timeout_s) as reply:
        if reply.status != 200:
            raw = b"".join([chunk async for chunk in reply.chunks])
            raise AttemptError(
                f"HTTP {reply.status}: {_error_message(raw)}",
                retryable=reply.status == 429 or reply.status >= 500,
                retry_after_s=_retry_after(reply.retry_after),
            )
        done = False
        async for line in _lines(reply.chunks):
            # SSE: "data: <json>" events separated by blank lines; comments (":") and other fields ignored.
            if not line.startswith("data:"):
                continue
            data = line[len("data:") :].strip()
            if data == "[DONE]":
                done = True
                break
            try:
                chunk = json.loads(data)
            except json.JSONDecodeError:
                raise AttemptError(f"invalid JSON in stream: {data[:200]!r}", retryable=True) from None
            if not isinstance(chunk, dict):
                raise AttemptError(f"unexpected stream event: {data[:200]!r}", retryable=True)
            _consume(chunk, out, t0)
        if not done:
            raise AttemptError("stream ended without 'data: [DONE]' (truncated response)", retryable=True)
    out.latency_s = time.perf_counter() - t0  # ttft_s stays None if no token came (e.g. an empty answer)
    return out


async def _lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """Text lines of a byte stream whose chunks split lines anywhere (SSE ends lines with \n, \r\n or \r)."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        *lines, pending = pending.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        for line in lines:
            yield line.decode("utf-8", errors="replace")
    if pending:
        yield pending.decode("utf-8", errors="replace")


def _consume(chunk: dict[str, Any], out: _Stream, t0: float) -> None:
    """Fold one chat.completion.chunk into `out`."""
    if "error" in chunk:
        # vLLM reports errors that happen after the 200 header as an error event inside the stream.
        raise AttemptError(f"error in stream: {_error_message(json.dumps(chunk).encode())}", retryable=True)
    for choice in chunk.get("choices") or []:
        if choice.get("index", 0) != 0:
            continue  # one sample = one choice; repeats are separate keys, never n > 1
        delta = choice.get("delta") or {}
        text = delta.get("content")
        # vLLM < 0.11 names it reasoning_content; newer versions (and the OpenAI spec draft) use reasoning.
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if (text or reasoning) and out.ttft_s is None:
            out.ttft_s = time.perf_counter() - t0
        if text:
            out.content.append(text)
        if reasoning:
            out.reasoning.append(reasoning)
        if choice.get("finish_reason"):
            out.finish_reason = choice["finish_reason"]
    usage = chunk.get("usage")
    if usage:
        out.prompt_tokens = usage.get("prompt_tokens")
        out.completion_tokens = usage.get("completion_tokens")


def _error_message(raw: bytes) -> str:
    """The server's own message from an error body: OpenAI `{"error": {"message"}}`, vLLM's older
    `{"message"}`, FastAPI's `{"detail"}`, else the text itself (shortened)."""
    text = raw.decode(errors="replace").strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return text[:MAX_ERROR_CHARS] or "(empty body)"
    message: Any = data
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            message = err.get("message", err)
        elif err is not None:
            message = err
        else:
            message = data.get("message") or data.get("detail") or data
    return (message if isinstance(message, str) else json.dumps(message))[:MAX_ERROR_CHARS]


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is rare on APIs and ignored)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _backoff(attempt: int, backoff_s: float, retry_after_s: float | None) -> float:
    """Exponential backoff with jitter (50–100% of the step), so clients retrying together spread out."""
    step = backoff_s * 2 ** (attempt - 1)
    delay = step * random.uniform(0.5, 1.0)
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return min(delay, MAX_BACKOFF_S)
