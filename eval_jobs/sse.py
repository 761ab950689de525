"""Reading an answer: the server-sent-event stream of a chat completion (or a completion), parsed defensively.

Whatever a server sends — wrong shapes or types, invalid or truncated UTF-8, a line of megabytes, an error body of
any size — ends as an `AttemptError` that names it, never as another exception: a malformed answer is a failed
sample, not a dead client actor.

Parsed here rather than with httpx-sse: that library reads an `httpx.Response`, and the same bytes also come from
Serve handles (the data plane), where there is none; the line cap and the per-read idle bounds must hold on both.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

# How much of an error body is kept in a record's `error`, and how much of one is read at most.
MAX_ERROR_CHARS = 500
MAX_ERROR_BODY_BYTES = 64 * 1024
# Longest SSE line accepted: a chunk of 16 tokens is a few hundred bytes; megabytes without a newline is a server
# gone wrong, and buffering it whole would grow the client actor without bound.
MAX_LINE_BYTES = 8 * 1024 * 1024


class AttemptError(Exception):
    """One attempt failed. `retryable` says whether another attempt may succeed."""

    def __init__(self, message: str, *, retryable: bool, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after_s = retry_after_s


def malformed(what: str, data: Any) -> AttemptError:
    try:
        shown = data if isinstance(data, str) else json.dumps(data, default=repr)
    except (ValueError, RecursionError):
        shown = repr(type(data))
    return AttemptError(f"malformed stream event ({what}): {shown[:200]!r}", retryable=True)


@dataclass
class Answer:
    """What one attempt gathered from the stream, and when answer data last came (for the silence bounds)."""

    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reasoning_tokens: int | None = None
    ttft_s: float | None = None
    latency_s: float | None = None
    events: int = 0  # data events that carried part of the answer
    last_data_at: float | None = None  # perf_counter of the latest such event


async def read_error_body(chunks: AsyncIterator[bytes]) -> bytes:
    """The first MAX_ERROR_BODY_BYTES of an error body: enough for any message, bounded whatever the server sends."""
    parts, size = [], 0
    async for chunk in chunks:
        parts.append(as_bytes(chunk))
        size += len(parts[-1])
        if size >= MAX_ERROR_BODY_BYTES:
            break
    return b"".join(parts)[:MAX_ERROR_BODY_BYTES]


def as_bytes(chunk: Any) -> bytes:
    if isinstance(chunk, (bytes, bytearray, memoryview)):
        return bytes(chunk)
    raise AttemptError(f"transport yielded {type(chunk).__name__}, not bytes", retryable=True)


async def lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """Text lines of a byte stream whose chunks split lines anywhere (SSE ends lines with \n, \r\n or \r).

    Linear in the bytes received (the pending line is rescanned only when a chunk brings a line end), and no line
    may grow past MAX_LINE_BYTES. Invalid or truncated UTF-8 becomes U+FFFD, as a browser's EventSource does."""
    pending = bytearray()
    async for raw in chunks:
        chunk = as_bytes(raw)
        pending += chunk
        if b"\n" not in chunk and b"\r" not in chunk:
            if len(pending) > MAX_LINE_BYTES:
                raise AttemptError(f"stream line longer than {MAX_LINE_BYTES} bytes", retryable=True)
            continue
        *lines, rest = bytes(pending).replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        pending = bytearray(rest)
        for line in lines:
            yield line.decode("utf-8", errors="replace")
    if pending:
        yield pending.decode("utf-8", errors="replace")


def _text_field(container: dict[str, Any], name: str, chunk: dict[str, Any]) -> str | None:
    value = container.get(name)
    if value is not None and not isinstance(value, str):
        raise malformed(f"{name} is {type(value).__name__}, not a string", chunk)
    return value


def _count_field(usage: dict[str, Any], name: str, chunk: dict[str, Any]) -> int | None:
    value = usage.get(name)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise malformed(f"usage.{name} is {value!r}, not a count", chunk)
    return value


def consume(chunk: dict[str, Any], out: Answer, t0: float) -> None:
    """Fold one chat.completion.chunk (or text_completion chunk) into `out`; an event of the wrong shape raises
    AttemptError naming it."""
    if "error" in chunk:
        # vLLM reports errors that happen after the 200 header as an error event inside the stream.
        raise AttemptError(f"error in stream: {_event_error(chunk)}", retryable=True)
    choices = chunk.get("choices")
    if choices is not None and not isinstance(choices, list):
        raise malformed("choices is not a list", chunk)
    answered = False
    for choice in choices or []:
        if not isinstance(choice, dict):
            raise malformed("a choice is not an object", chunk)
        if choice.get("index", 0) != 0:
            continue  # one sample = one choice; repeats are separate keys, never n > 1
        delta = choice.get("delta")
        if delta is None:
            delta = {}
        if not isinstance(delta, dict):
            raise malformed("delta is not an object", chunk)
        # A completions stream (AISBench's vllm_api_general) carries its text in the choice itself.
        text = _text_field(delta, "content", chunk) or _text_field(choice, "text", chunk)
        # vLLM < 0.11 names it reasoning_content; newer versions (and the OpenAI spec draft) use reasoning.
        reasoning = _text_field(delta, "reasoning_content", chunk) or _text_field(delta, "reasoning", chunk)
        finish = _text_field(choice, "finish_reason", chunk)
        if (text or reasoning) and out.ttft_s is None:
            out.ttft_s = time.perf_counter() - t0
        if text:
            out.content.append(text)
        if reasoning:
            out.reasoning.append(reasoning)
        if finish:
            out.finish_reason = finish
        answered = answered or bool(text or reasoning or finish or delta.get("tool_calls"))
    usage = chunk.get("usage")
    if usage is not None and not isinstance(usage, dict):
        raise malformed("usage is not an object", chunk)
    if usage:
        out.prompt_tokens = _count_field(usage, "prompt_tokens", chunk)
        out.completion_tokens = _count_field(usage, "completion_tokens", chunk)
        details = usage.get("completion_tokens_details")
        if details is not None and not isinstance(details, dict):
            raise malformed("usage.completion_tokens_details is not an object", chunk)
        if details:
            out.reasoning_tokens = _count_field(details, "reasoning_tokens", chunk)
        answered = True
    if answered:
        # Only answer data holds the silence bounds off: keep-alive comments and empty events do not.
        out.events += 1
        out.last_data_at = time.perf_counter()


def _event_error(chunk: dict[str, Any]) -> str:
    try:
        return error_message(json.dumps(chunk).encode())
    except (ValueError, RecursionError):
        return "(an error event too deeply nested to show)"


def error_message(raw: bytes) -> str:
    """The server's own message from an error body: OpenAI `{"error": {"message"}}`, vLLM's older
    `{"message"}`, FastAPI's `{"detail"}`, else the text itself (shortened)."""
    text = raw.decode(errors="replace").strip()
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
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
    if isinstance(message, str):
        return message[:MAX_ERROR_CHARS]
    try:
        return json.dumps(message)[:MAX_ERROR_CHARS]
    except (ValueError, RecursionError):
        return text[:MAX_ERROR_CHARS]
