"""The simulated engine's aiohttp application: its routes, its batch slots and its clock.

Timing: the first token is ready `ttft_s` after the request starts generating and each further one `tpot_s`
later, measured from absolute deadlines so that thousands of concurrent requests sharing one event loop don't
drift. A request starts generating on arrival, or, with `max_num_seqs` N (vLLM's batch-slot limit), once fewer
than N others are generating: the rest wait in arrival order, as in vLLM's scheduler. With a slot limit an
engine has a capacity, so evaluation time has an engine-bound ideal to compare against (bench/scale.py).
Output length is `min(max_tokens, output_tokens)`; `max_tokens` defaults to 16 when the request leaves it
unset. A streamed request's `stream_interval` groups tokens into chunks as vLLM does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

# The engine-side key rule, standard library only (what vLLM loads as --middleware): the simulator applies the
# very same rule rather than a copy of it.
from serve_apps.engine_site import evalcluster_engine_auth as engine_auth
from sim_engine.config import SimEngineConfig
from sim_engine.protocol import (
    FINGERPRINT,
    OWNED_BY,
    RequestError,
    choices,
    count_tokens,
    error_response,
    lengths,
    message_text,
    prompt_text,
    stream_interval,
    tokens_text,
)

# Env vars through which Ray hands a replica its devices; the child reports them so tests can check
# visibility.
DEVICE_ENV_VARS = ("ASCEND_RT_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES")
# Engine settings the supervisor passes through the environment, reported for the same reason.
ENGINE_ENV_VARS = ("VLLM_MS_MODEL_BACKEND", "OMP_NUM_THREADS")


def _require_key(digest: bytes):
    @web.middleware
    async def require_key(request: web.Request, handler):
        if request.path in engine_auth.OPEN_PATHS or engine_auth.authorized(request.headers.get("Authorization"),
                                                                            digest):
            return await handler(request)
        return web.Response(status=401, body=engine_auth.UNAUTHORIZED_BODY, content_type="application/json")

    return require_key


class SimEngine:
    """The aiohttp application plus the counters fault tests read back through GET /sim/stats."""

    def __init__(self, config: SimEngineConfig, served_model_name: str, max_model_len: int) -> None:
        self.config = config
        self.served_model_name = served_model_name
        self.max_model_len = max_model_len
        self.requests = 0  # valid generation requests received (a re-sent request counts again)
        self.rejected = 0  # requests answered with an error (unknown model, bad body)
        self.completed = 0
        self.in_flight = 0  # received and not yet answered: waiting for a slot or generating
        self.peak_generating = 0
        self.created = int(time.time())
        self._slots = asyncio.Semaphore(config.max_num_seqs) if config.max_num_seqs else None
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
        c = self.config
        card = {
            "id": self.served_model_name,
            "object": "model",
            "created": self.created,
            "owned_by": OWNED_BY,
            "root": self.served_model_name,
            "parent": None,
            "max_model_len": self.max_model_len,
            "metadata": {
                "simulator": True,
                "engine": "evalcluster sim_engine",
                "note": "simulated latency; outputs are filler and must never be scored",
                "ttft_s": c.ttft_s,
                "tpot_s": c.tpot_s,
                "output_tokens": c.output_tokens,
                "max_num_seqs": c.max_num_seqs,
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
            prompt = message_text(body.get("messages")) if chat else prompt_text(body.get("prompt"))
            prompt_tokens = count_tokens(prompt)
            n_tokens, n_choices, finish = lengths(body, prompt_tokens, max_model_len=self.max_model_len,
                                                  output_tokens=self.config.output_tokens)
            stream_interval(body)
        except RequestError as exc:
            self.rejected += 1
            return error_response(exc)
        self.requests += 1
        if self.config.record_requests:
            self._record(body)
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
                    response = await self._whole(chat, n_tokens, n_choices, finish, usage, start)
            self.completed += 1
            return response
        finally:
            self.in_flight -= 1

    def _record(self, body: dict[str, Any]) -> None:
        """One line per accepted request, written before answering: a test that reads the file after its run
        finds every body. Blocking file I/O on the loop: a test aid, off in benchmarks."""
        with open(self.config.record_requests, "a", encoding="utf-8") as f:  # type: ignore[arg-type]
            f.write(json.dumps(body, ensure_ascii=False) + "\n")

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
        if body.get("model") != self.served_model_name:
            raise RequestError(
                404, f"The model `{body.get('model')}` does not exist.", "NotFoundError", "model"
            )
        return body

    def _deadline(self, start: float, token_index: int) -> float:
        return start + self.config.ttft_s + token_index * self.config.tpot_s

    async def _sleep_until(self, deadline: float) -> None:
        delay = deadline - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)

    def _header(self, chat: bool, object_name: str) -> dict[str, Any]:
        """The fields every response or chunk opens with; `system_fingerprint` says SIMULATOR on each."""
        return {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-sim-{uuid.uuid4().hex}",
            "object": object_name,
            "created": int(time.time()),
            "model": self.served_model_name,
            "system_fingerprint": FINGERPRINT,
        }

    async def _whole(
        self, chat: bool, n_tokens: int, n_choices: int, finish: str, usage: dict[str, int], start: float
    ) -> web.Response:
        await self._sleep_until(self._deadline(start, n_tokens - 1))
        header = self._header(chat, "chat.completion" if chat else "text_completion")
        return web.json_response(
            {**header, "choices": choices(chat, tokens_text(0, n_tokens), n_choices, finish), "usage": usage}
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
        base = self._header(chat, "chat.completion.chunk" if chat else "text_completion")

        def encode(chunk_choices: list[dict[str, Any]], chunk_usage: dict[str, int] | None = None) -> bytes:
            chunk = {**base, "choices": chunk_choices}
            if include_usage:  # OpenAI: every chunk carries `usage`, null except on the final usage chunk
                chunk["usage"] = chunk_usage
            return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"

        def token_chunk(first: int, end: int) -> bytes:
            """Tokens first..end-1 in one chunk per choice."""
            text = tokens_text(first, end)
            reason = finish if end == n_tokens else None
            # vLLM sends the role with the first token, not before it: TTFT is the first chunk's arrival.
            delta = {"role": "assistant", "content": text} if first == 0 else {"content": text}
            return encode(choices(chat, text, n_choices, reason, delta=delta))

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
