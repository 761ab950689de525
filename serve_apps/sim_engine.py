"""The simulated-latency engine: an OpenAI-compatible server that only pretends to generate.

It stands in for vLLM when benchmarking orchestration at scale on CPU (design.md §5): the engine supervisor
starts it like a real engine, on any platform's resources, so placement, NPU visibility and request routing
are exercised without a model. It is a SIMULATOR everywhere it shows: the start-up log line, `owned_by` and
`metadata` of its model card, and every response's `system_fingerprint`. Its outputs are filler ("sim sim
sim") and never a score.

    python -m serve_apps.sim_engine --host 127.0.0.1 --port 8100 --served-model-name step_400 \\
        --ttft-s 0.05 --tpot-s 0.01 [--output-tokens 64] [--max-model-len 4096] [--max-num-seqs 8]

Timing: the first token is ready `ttft_s` after the request starts generating and each further one `tpot_s`
later, measured from absolute deadlines so that thousands of concurrent requests sharing one event loop don't
drift. A request starts generating on arrival, or, with `--max-num-seqs N` (vLLM's batch-slot limit), once fewer
than N others are generating: the rest wait in arrival order, as in vLLM's scheduler. With a slot limit an
engine has a capacity, so evaluation time has an engine-bound ideal to compare against (bench/scale.py).
Output length is `min(max_tokens, --output-tokens)`; `max_tokens` defaults to 16 when the request leaves it
unset. A streamed request's `stream_interval` groups tokens into chunks as vLLM does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from serve_apps.engine_site import evalcluster_engine_auth as engine_auth

logger = logging.getLogger("evalcluster.sim_engine")

OWNED_BY = "evalcluster-simulator"
FINGERPRINT = "evalcluster-simulator"
DEFAULT_MAX_TOKENS = 16
# Env vars through which Ray hands a replica its devices; the child reports them so tests can check
# visibility.
DEVICE_ENV_VARS = ("ASCEND_RT_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES")
# Engine settings the supervisor passes through the environment, reported for the same reason.
ENGINE_ENV_VARS = ("VLLM_MS_MODEL_BACKEND", "OMP_NUM_THREADS")


@dataclass(frozen=True)
class SimSettings:
    """What one simulated engine serves and how slowly."""

    served_model_name: str
    ttft_s: float = 0.05
    tpot_s: float = 0.01
    output_tokens: int | None = None
    max_model_len: int = 32768
    max_num_seqs: int | None = None  # None: every request generates at once


class RequestError(Exception):
    """A request the engine refuses; `_error_response` turns it into an OpenAI-style error body."""

    def __init__(self, status: int, message: str, error_type: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.param = param


def _require_key(digest: bytes):
    @web.middleware
    async def require_key(request: web.Request, handler):
        if request.path in engine_auth.OPEN_PATHS or engine_auth.authorized(request.headers.get("Authorization"),
                                                                            digest):
            return await handler(request)
        return web.Response(status=401, body=engine_auth.UNAUTHORIZED_BODY, content_type="application/json")

    return require_key


def _error_response(exc: RequestError) -> web.Response:
    body = {"error": {"message": str(exc), "type": exc.error_type, "param": exc.param, "code": exc.status}}
    return web.json_response(body, status=exc.status)


def _count_tokens(text: str) -> int:
    """Whitespace words: the simulator has no tokenizer; usage only has to be plausible and deterministic."""
    return len(text.split())


def _message_text(messages: Any) -> str:
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


def _prompt_text(prompt: Any) -> str:
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


def stream_interval(body: dict[str, Any]) -> int:
    """Tokens per streamed chunk the request asks for (vLLM's `stream_interval`; 1 when unset)."""
    value = _first_set(body, "stream_interval", default=1)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise RequestError(400, f"stream_interval must be at least 1, got {value!r}.", "BadRequestError",
                           "stream_interval")
    return value


def _token_text(index: int) -> str:
    return "sim" if index == 0 else " sim"


class SimEngine:
    """The aiohttp application plus the counters fault tests read back through GET /sim/stats."""

    def __init__(self, settings: SimSettings) -> None:
        self.settings = settings
        self.requests = 0  # valid generation requests received (a re-sent request counts again)
        self.rejected = 0  # requests answered with an error (unknown model, bad body)
        self.completed = 0
        self.in_flight = 0  # received and not yet answered: waiting for a slot or generating
        self.peak_generating = 0
        self.created = int(time.time())
        self._slots = asyncio.Semaphore(settings.max_num_seqs) if settings.max_num_seqs else None
        self._generating = 0

    def app(self) -> web.Application:
        # The key rule of vLLM behind the supervisor (engine_site/evalcluster_engine_auth.py): with VLLM_API_KEY
        # set, every route but /health needs it, so the supervisor's code path is the same for both engines.
        key = os.environ.get(engine_auth.KEY_ENV)
        middlewares = [_require_key(engine_auth.key_digest(key))] if key else []
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=middlewares)
        app.add_routes(
            [
                web.get("/health", self.health),
                web.get("/v1/models", self.models),
                web.post("/v1/chat/completions", self.chat_completions),
                web.post("/v1/completions", self.completions),
                web.get("/sim/stats", self.stats),
            ]
        )
        return app

    # -- read-only routes ------------------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def models(self, request: web.Request) -> web.Response:
        s = self.settings
        card = {
            "id": s.served_model_name,
            "object": "model",
            "created": self.created,
            "owned_by": OWNED_BY,
            "root": s.served_model_name,
            "parent": None,
            "max_model_len": s.max_model_len,
            "metadata": {
                "simulator": True,
                "engine": "evalcluster sim_engine",
                "note": "simulated latency; outputs are filler and must never be scored",
                "ttft_s": s.ttft_s,
                "tpot_s": s.tpot_s,
                "output_tokens": s.output_tokens,
                "max_num_seqs": s.max_num_seqs,
            },
        }
        return web.json_response({"object": "list", "data": [card]})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "requests": self.requests,
                "completed": self.completed,
                "rejected": self.rejected,
                "in_flight": self.in_flight,
                "peak_generating": self.peak_generating,
                "visible_devices": {name: os.environ.get(name) for name in DEVICE_ENV_VARS},
                "engine_env": {name: os.environ.get(name) for name in ENGINE_ENV_VARS},
                "pid": os.getpid(),
            }
        )

    # -- generation ------------------------------------------------------------------------------------------

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _generate(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        try:
            body = await self._parse(request)
            prompt = _message_text(body.get("messages")) if chat else _prompt_text(body.get("prompt"))
            prompt_tokens = _count_tokens(prompt)
            n_tokens, n_choices, finish = self._lengths(body, prompt_tokens)
            stream_interval(body)
        except RequestError as exc:
            self.rejected += 1
            return _error_response(exc)
        self.requests += 1
        self.in_flight += 1
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": n_tokens * n_choices,
            "total_tokens": prompt_tokens + n_tokens * n_choices,
        }
        try:
            async with self._slot():
                start = asyncio.get_running_loop().time()
                if body.get("stream"):
                    response = await self._stream(request, body, chat, n_tokens, n_choices, finish, usage, start)
                else:
                    response = await self._whole(body, chat, n_tokens, n_choices, finish, usage, start)
            self.completed += 1
            return response
        finally:
            self.in_flight -= 1

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        """One of the engine's batch slots for the length of a generation (none to wait for without a limit)."""
        async with self._slots or contextlib.nullcontext():
            self._generating += 1
            self.peak_generating = max(self.peak_generating, self._generating)
            try:
                yield
            finally:
                self._generating -= 1

    async def _parse(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError(400, "request body is not valid JSON", "BadRequestError") from None
        if not isinstance(body, dict):
            raise RequestError(400, "request body must be a JSON object", "BadRequestError")
        if body.get("model") != self.settings.served_model_name:
            raise RequestError(
                404, f"The model `{body.get('model')}` does not exist.", "NotFoundError", "model"
            )
        return body

    def _lengths(self, body: dict[str, Any], prompt_tokens: int) -> tuple[int, int, str]:
        """Output tokens per choice, number of choices and finish_reason, validated the way vLLM does."""
        max_tokens = _first_set(body, "max_completion_tokens", "max_tokens", default=DEFAULT_MAX_TOKENS)
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise RequestError(
                400, f"max_tokens must be at least 1, got {max_tokens!r}.", "BadRequestError", "max_tokens"
            )
        n = _first_set(body, "n", default=1)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise RequestError(400, f"n must be at least 1, got {n!r}.", "BadRequestError", "n")
        if prompt_tokens + max_tokens > self.settings.max_model_len:
            raise RequestError(
                400,
                f"This model's maximum context length is {self.settings.max_model_len} tokens. However, you "
                f"requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, "
                f"{max_tokens} in the completion). Please reduce the length of the messages or completion.",
                "BadRequestError",
                "max_tokens",
            )
        limit = self.settings.output_tokens
        n_tokens = min(max_tokens, limit) if limit is not None else max_tokens
        # "length" when the client's max_tokens cut the output, "stop" when the simulator's own length did.
        return n_tokens, n, "length" if n_tokens >= max_tokens else "stop"

    def _deadline(self, start: float, token_index: int) -> float:
        return start + self.settings.ttft_s + token_index * self.settings.tpot_s

    async def _sleep_until(self, deadline: float) -> None:
        delay = deadline - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _whole(
        self,
        body: dict[str, Any],
        chat: bool,
        n_tokens: int,
        n_choices: int,
        finish: str,
        usage: dict[str, int],
        start: float,
    ) -> web.Response:
        await self._sleep_until(self._deadline(start, n_tokens - 1))
        text = "".join(_token_text(i) for i in range(n_tokens))
        if chat:
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": finish,
                }
                for i in range(n_choices)
            ]
        else:
            choices = [
                {"index": i, "text": text, "logprobs": None, "finish_reason": finish}
                for i in range(n_choices)
            ]
        return web.json_response(
            {
                "id": f"{'chatcmpl' if chat else 'cmpl'}-sim-{uuid.uuid4().hex}",
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": self.settings.served_model_name,
                "system_fingerprint": FINGERPRINT,
                "choices": choices,
                "usage": usage,
            }
        )

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        chat: bool,
        n_tokens: int,
        n_choices: int,
        finish: str,
        usage: dict[str, int],
        start: float,
    ) -> web.StreamResponse:
        """SSE like vLLM's: a token per chunk and choice (or `stream_interval` tokens), finish_reason on the last,
        optional usage chunk."""
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        base = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-sim-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.settings.served_model_name,
            "system_fingerprint": FINGERPRINT,
        }

        def encode(choices: list[dict[str, Any]], chunk_usage: dict[str, int] | None = None) -> bytes:
            chunk = {**base, "choices": choices}
            if include_usage:  # OpenAI: every chunk carries `usage`, null except on the final usage chunk
                chunk["usage"] = chunk_usage
            return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"

        def token_chunk(first: int, end: int) -> bytes:
            """Tokens first..end-1 in one chunk per choice."""
            text = "".join(_token_text(t) for t in range(first, end))
            reason = finish if end == n_tokens else None
            if chat:
                # vLLM sends the role with the first token, not before it: TTFT is the first chunk's arrival.
                delta = {"role": "assistant", "content": text} if first == 0 else {"content": text}
                choices = [
                    {"index": i, "delta": delta, "logprobs": None, "finish_reason": reason}
                    for i in range(n_choices)
                ]
            else:
                choices = [
                    {"index": i, "text": text, "logprobs": None, "finish_reason": reason}
                    for i in range(n_choices)
                ]
            return encode(choices)

        # vLLM's stream_interval: the first token at once, then a chunk whenever `interval` more are ready, and
        # whatever is left at the end. Chunks between the first and the last of the same size are the same
        # bytes: encode each size once (halves CPU per stream).
        interval = stream_interval(body)
        middle: dict[int, bytes] = {}
        sent = 0
        for t in range(n_tokens):
            end = t + 1
            if sent and end - sent < interval and end < n_tokens:
                continue
            await self._sleep_until(self._deadline(start, t))
            if not sent or end == n_tokens:
                await response.write(token_chunk(sent, end))
            else:
                if end - sent not in middle:
                    middle[end - sent] = token_chunk(sent, end)
                await response.write(middle[end - sent])
            sent = end
        if include_usage:
            await response.write(encode([], usage))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="evalcluster simulated-latency engine (a SIMULATOR, not a model)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="Address to bind; loopback by default.")
    parser.add_argument("--port", type=int, required=True, help="Port to bind.")
    parser.add_argument("--served-model-name", required=True, help="The one model id this engine answers to.")
    parser.add_argument("--ttft-s", type=float, default=0.05, help="Seconds to the first token.")
    parser.add_argument(
        "--tpot-s", type=float, default=0.01, help="Seconds per output token after the first."
    )
    parser.add_argument(
        "--output-tokens", type=int, default=None, help="Cap on output tokens (else max_tokens)."
    )
    parser.add_argument(
        "--max-model-len", type=int, default=32768, help="Context length reported and enforced."
    )
    parser.add_argument(
        "--max-num-seqs", type=int, default=None, help="Batch slots: requests generating at once (else unlimited)."
    )
    args = parser.parse_args(argv)
    for name in ("ttft_s", "tpot_s"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    for name in ("output_tokens", "max_model_len", "max_num_seqs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = SimSettings(
        served_model_name=args.served_model_name,
        ttft_s=args.ttft_s,
        tpot_s=args.tpot_s,
        output_tokens=args.output_tokens,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
    )
    devices = {name: os.environ[name] for name in DEVICE_ENV_VARS if name in os.environ}
    logger.info(
        "SIMULATOR: evalcluster sim engine (not a model; outputs are filler, never scored) serving %r on "
        "http://%s:%d (ttft_s=%s tpot_s=%s output_tokens=%s max_model_len=%s max_num_seqs=%s devices=%s)",
        settings.served_model_name,
        args.host,
        args.port,
        settings.ttft_s,
        settings.tpot_s,
        settings.output_tokens,
        settings.max_model_len,
        settings.max_num_seqs,
        devices or "none",
    )
    # No access log: at thousands of requests per second it would cost more than the simulated work.
    # handler_cancellation: a client that disconnects stops its simulated generation, like vLLM aborting it.
    # shutdown_timeout: the supervisor's terminate → wait → kill should not wait a minute for in-flight
    # streams.
    web.run_app(
        SimEngine(settings).app(),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        handler_cancellation=True,
        shutdown_timeout=1.0,
    )


if __name__ == "__main__":
    main()
