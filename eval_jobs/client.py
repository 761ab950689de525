"""The transport: one streamed chat completion per sample, with a finite timeout and retries.

    async with make_client(concurrency=32) as session:
        result = await send_chat(session, request, timeout_s=600, max_retries=3, backoff_s=1.0)
        # result.status is "ok" or "failed"; a per-sample failure is a record, never an exception

Responses are streamed (SSE) so time to first token can be measured; reasoning content is kept apart from the
answer, as vLLM sends it (`delta.reasoning_content`, or `delta.reasoning` in newer versions).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from eval_jobs.records import SampleRequest, SampleResult

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
    return f"{base}/v1/chat/completions"


async def send_chat(
    session: httpx.AsyncClient,
    request: SampleRequest,
    *,
    timeout_s: float,
    max_retries: int,
    backoff_s: float,
    api_key: str | None = None,
) -> SampleResult:
    """Send one sample as a streamed chat completion; return its record, ok or failed (never raise for it).

    Retried (up to `max_retries` times after the first attempt, exponential backoff with jitter): connection
    and read errors, timeouts, 429, 5xx (a killed Serve replica answers 500), streams that end early or carry
    invalid JSON or an error event. Other 4xx are final at once. Each attempt is bounded by `timeout_s` in
    total, so a sample ends within (max_retries + 1) * timeout_s plus the backoff sleeps.
    TTFT and latency are those of the successful attempt; `started_at` is when the first attempt was sent.
    """
    body = dict(request.body)
    body["stream"] = True
    # Ask for a final usage chunk, keeping any other stream options the caller set.
    body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    headers = {"Accept": "text/event-stream"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    url = chat_url(request.endpoint)

    started_at = time.time()
    attempts = 0
    error, retryable = "", True
    stream: _Stream | None = None
    while True:
        attempts += 1
        try:
            # wait_for bounds the whole attempt: httpx's own timeouts apply per read, and a server that
            # trickles bytes (or keeps a stream open without tokens) would otherwise hold the sample forever.
            attempt = _attempt(session, url, body, headers, timeout_s)
            stream = await asyncio.wait_for(attempt, timeout=timeout_s)
            break
        except AttemptError as exc:
            error, retryable, retry_after = str(exc), exc.retryable, exc.retry_after_s
        except (asyncio.TimeoutError, httpx.TimeoutException):
            error, retryable, retry_after = f"timed out after {timeout_s:g} s", True, None
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            error, retryable, retry_after = f"bad endpoint URL {url!r}: {exc}", False, None
        except httpx.RequestError as exc:
            # Connection refused/reset, peer closed mid-body, protocol errors: the replica may be restarting.
            error, retryable, retry_after = f"{type(exc).__name__}: {str(exc) or 'no detail'}", True, None
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


async def _attempt(
    session: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str], timeout_s: float
) -> _Stream:
    """One POST, read to the end of its SSE stream. Raises AttemptError or an httpx error on failure."""
    t0 = time.perf_counter()
    out = _Stream()
    async with session.stream("POST", url, json=body, headers=headers, timeout=timeout_s) as resp:
        if resp.status_code != 200:
            raw = await resp.aread()
            status = resp.status_code
            raise AttemptError(
                f"HTTP {status}: {_error_message(raw)}",
                retryable=status == 429 or status >= 500,
                retry_after_s=_retry_after(resp.headers.get("retry-after")),
            )
        done = False
        async for line in resp.aiter_lines():
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
