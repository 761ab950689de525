"""What the simulated engine reads from an OpenAI request and writes back, validated the way vLLM does it.

No I/O and no timing here (that is `server.py`): request bodies in, lengths and response bodies out.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

OWNED_BY = "evalcluster-simulator"
FINGERPRINT = "evalcluster-simulator"
DEFAULT_MAX_TOKENS = 16


class RequestError(Exception):
    """A request the engine refuses; `error_response` turns it into an OpenAI-style error body."""

    def __init__(self, status: int, message: str, error_type: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.param = param


def error_response(exc: RequestError) -> web.Response:
    body = {"error": {"message": str(exc), "type": exc.error_type, "param": exc.param, "code": exc.status}}
    return web.json_response(body, status=exc.status)


def count_tokens(text: str) -> int:
    """Whitespace words: the simulator has no tokenizer; usage only has to be plausible and deterministic."""
    return len(text.split())


def message_text(messages: Any) -> str:
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list", "BadRequestError", "messages")
    parts = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):  # multi-part content: only text parts count
            parts.extend(p.get("text", "") for p in content if isinstance(p, dict))
    return " ".join(parts)


def prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return " ".join(prompt)
    if isinstance(prompt, list) and all(isinstance(p, int) for p in prompt):
        return " ".join("t" for _ in prompt)  # token ids: one "word" each
    raise RequestError(
        400,
        "'prompt' must be a string, a list of strings or a list of token ids",
        "BadRequestError",
        "prompt",
    )


def _first_set(body: dict[str, Any], *keys: str, default: Any) -> Any:
    """The first of `keys` the request sets to a non-null value (0 stays 0 and is rejected, as vLLM does)."""
    return next((body[k] for k in keys if body.get(k) is not None), default)


def _positive_int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise RequestError(400, f"{name} must be at least 1, got {value!r}.", "BadRequestError", name)
    return value


def stream_interval(body: dict[str, Any]) -> int:
    """Tokens per streamed chunk the request asks for (vLLM's `stream_interval`; 1 when unset)."""
    return _positive_int(_first_set(body, "stream_interval", default=1), "stream_interval")


def lengths(body: dict[str, Any], prompt_tokens: int, *, max_model_len: int,
            output_tokens: int | None) -> tuple[int, int, str]:
    """Output tokens per choice, number of choices and finish_reason, validated the way vLLM does."""
    max_tokens = _first_set(body, "max_completion_tokens", "max_tokens", default=DEFAULT_MAX_TOKENS)
    max_tokens = _positive_int(max_tokens, "max_tokens")
    n = _positive_int(_first_set(body, "n", default=1), "n")
    if prompt_tokens + max_tokens > max_model_len:
        raise RequestError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, "
            f"{max_tokens} in the completion). Please reduce the length of the messages or completion.",
            "BadRequestError",
            "max_tokens",
        )
    n_tokens = min(max_tokens, output_tokens) if output_tokens is not None else max_tokens
    # "length" when the client's max_tokens cut the output, "stop" when the simulator's own length did.
    return n_tokens, n, "length" if n_tokens >= max_tokens else "stop"


def tokens_text(first: int, end: int) -> str:
    """The filler of tokens first..end-1: "sim sim sim", never an answer."""
    return "".join("sim" if t == 0 else " sim" for t in range(first, end))


def choices(chat: bool, text: str, n_choices: int, finish: str | None, *, delta: dict[str, str] | None = None
            ) -> list[dict[str, Any]]:
    """`n_choices` identical choices: chat `message` (or `delta`, when streaming), or completion `text`."""
    if chat:
        message = {"role": "assistant", "content": text}
        key, value = ("delta", delta) if delta is not None else ("message", message)
        return [{"index": i, key: value, "logprobs": None, "finish_reason": finish} for i in range(n_choices)]
    return [{"index": i, "text": text, "logprobs": None, "finish_reason": finish} for i in range(n_choices)]
