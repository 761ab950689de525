"""The shared OpenAI-compatible endpoint: reads only `model` from a request, hands the body to that checkpoint's
engine supervisor, and streams the engine's answer back unchanged.

No `from __future__ import annotations` here: FastAPI must see the real `Request` type on the methods Serve
rewraps, or it takes `request` for a query parameter.
"""


import asyncio
import hashlib
import hmac
import json
import time
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from cluster.errors import EvalClusterError
from serve_apps.errors import (
    AuthenticationError,
    BadRequestError,
    EngineUnavailableError,
    ModelNotFoundError,
    RequestTooLargeError,
)

ENGINE_APP_PREFIX = "engine:"
ENGINE_DEPLOYMENT = "EngineSupervisor"


def engine_app_name(served_model_name: str) -> str:
    return ENGINE_APP_PREFIX + served_model_name


def served_model(app: str, deployment: str) -> str | None:
    """The model a Serve deployment serves, if it is a checkpoint's engine supervisor (for cluster status and
    placement messages, which know Serve's naming but not ours)."""
    if deployment != ENGINE_DEPLOYMENT or not app.startswith(ENGINE_APP_PREFIX):
        return None
    return app.removeprefix(ENGINE_APP_PREFIX) or None


class IngressSettings(BaseModel):
    api_key: str | None = Field(None, description="Bearer key required on /v1 routes; None: open.")
    max_request_bytes: int = Field(8 * 1024 * 1024, description="Larger bodies get 413.")
    model_refresh_s: float = Field(1.0, description="How long the served-model table is cached.")


def joinable_settings(settings: IngressSettings) -> dict[str, Any]:
    """The settings a running ingress keeps when another endpoint joins it, comparable without the key itself."""
    key = settings.api_key
    return {"serve.max_request_bytes": settings.max_request_bytes,
            "serve.api_key": hashlib.sha256(key.encode()).hexdigest()[:16] if key else None}


def openai_error(status: int, message: str, error_type: str, param: str | None = None) -> JSONResponse:
    """The one place error bodies are made, in OpenAI's shape."""
    body = {"error": {"message": message, "type": error_type, "param": param, "code": status}}
    return JSONResponse(body, status_code=status)


api = FastAPI(title="evalcluster OpenAI endpoint", docs_url=None, redoc_url=None)


@api.exception_handler(EvalClusterError)
async def _known_error(_: Request, exc: EvalClusterError) -> JSONResponse:
    return openai_error(exc.http_status, str(exc), exc.error_type, getattr(exc, "param", None))


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return openai_error(exc.status_code, str(exc.detail), "invalid_request_error")


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    return openai_error(400, str(exc.errors()[:3]), "invalid_request_error")


def require_api_key(request: Request) -> None:
    expected: str | None = request.app.state.settings.api_key
    if expected is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # Constant-time compare, so response timing does not reveal how much of a guessed key was right.
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise AuthenticationError("missing or invalid API key (send 'Authorization: Bearer KEY')")


async def read_json_body(request: Request, limit: int) -> tuple[bytes, dict[str, Any]]:
    """The raw body (to forward unchanged) and its parsed JSON object; 413 past `limit`, 400 if not a JSON object."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestTooLargeError(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLargeError(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested deeper than the parser goes
        raise BadRequestError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise BadRequestError(f"request body must be a JSON object, got {type(payload).__name__}")
    return body, payload


class ModelTable:
    """Served model name → handle of its engine supervisor, from Serve's own application list (the source of truth,
    so checkpoints added or removed at run time are seen by every ingress replica)."""

    def __init__(self, refresh_s: float):
        self._refresh_s = refresh_s
        self._status: dict[str, str] = {}
        self._fetched_at = float("-inf")
        self._handles: dict[str, Any] = {}
        self._lock = asyncio.Lock()

    async def _refresh(self) -> dict[str, str]:
        async with self._lock:
            if time.monotonic() - self._fetched_at > self._refresh_s:
                status = await asyncio.to_thread(serve.status)
                self._status = {
                    # ApplicationStatus is a str enum whose str() is "ApplicationStatus.RUNNING": use its value.
                    name.removeprefix(ENGINE_APP_PREFIX): getattr(app.status, "value", str(app.status))
                    for name, app in status.applications.items()
                    if name.startswith(ENGINE_APP_PREFIX)
                }
                self._fetched_at = time.monotonic()
        return self._status

    async def running(self) -> list[str]:
        """Checkpoints whose engines are all up: what /v1/models lists."""
        return sorted(name for name, status in (await self._refresh()).items() if status == "RUNNING")

    async def handle(self, model: str):
        """The handle for `model`. A checkpoint whose replica is being replaced still routes (the request waits for
        the new replica) rather than answering 404, which clients would not retry."""
        status = (await self._refresh()).get(model)
        if status is None or status in ("DELETING", "DEPLOY_FAILED"):
            known = ", ".join(await self.running()) or "none"
            raise ModelNotFoundError(f"model {model!r} is not served here (served: {known})")
        if model not in self._handles:
            self._handles[model] = serve.get_deployment_handle(
                ENGINE_DEPLOYMENT, engine_app_name(model), _check_exists=False
            ).options(stream=True)
        return self._handles[model]


class IngressMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "evalcluster_requests", "Requests by route, model and status", ["route", "model", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "evalcluster_request_seconds",
            "Time to the engine's first bytes (a whole answer, or a stream's first chunk)", ["route", "model"],
            registry=self.registry, buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 300),
        )


async def _finish(stream) -> None:
    """Read a response stream to its end. After a whole answer only the end-of-stream marker is left; reading it
    ends the call here rather than leaving it to garbage collection."""
    async for _ in stream:
        pass


async def _stream_from(first: bytes, rest):
    """The engine's stream: the bytes that came with the head, then the rest as they arrive."""
    if first:
        yield first
    async for chunk in rest:
        yield chunk


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=4096)
@serve.ingress(api)
class OpenAIIngress:
    """The endpoint clients talk to: `/v1/models`, `/v1/chat/completions`, `/v1/completions`, `/health`, `/metrics`."""

    def __init__(self, settings: IngressSettings):
        api.state.settings = settings
        self._settings = settings
        self._models = ModelTable(settings.model_refresh_s)
        self._metrics = IngressMetrics()

    def joined_settings(self) -> dict[str, Any]:
        """What an endpoint joining this ingress keeps instead of its own config (the key as a hash)."""
        return joinable_settings(self._settings)

    @api.get("/health")
    async def health(self) -> Response:
        return Response(status_code=200)

    @api.get("/metrics", dependencies=[Depends(require_api_key)])
    async def metrics(self) -> Response:
        return Response(generate_latest(self._metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @api.get("/v1/models", dependencies=[Depends(require_api_key)])
    async def list_models(self) -> JSONResponse:
        """Every served checkpoint's own model card, as its engine reports it."""
        cards = await asyncio.gather(*(self._engine_models(name) for name in await self._models.running()))
        return JSONResponse({"object": "list", "data": [card for group in cards for card in group]})

    @api.post("/v1/chat/completions", dependencies=[Depends(require_api_key)])
    async def chat_completions(self, request: Request) -> Response:
        return await self._forward(request, "/v1/chat/completions")

    @api.post("/v1/completions", dependencies=[Depends(require_api_key)])
    async def completions(self, request: Request) -> Response:
        return await self._forward(request, "/v1/completions")

    async def _engine_models(self, name: str) -> list[dict[str, Any]]:
        try:
            stream = (await self._models.handle(name)).forward.remote("GET", "/v1/models")
            head = await stream.__anext__()
            await _finish(stream)
            return json.loads(head["body"])["data"] if head["status"] == 200 else []
        except Exception:  # a checkpoint being removed or restarted is simply not listed this time
            return []

    async def _forward(self, request: Request, path: str) -> Response:
        body, payload = await read_json_body(request, self._settings.max_request_bytes)
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequestError("field 'model' is required and must be a non-empty string")
        handle = await self._models.handle(model)
        started = time.perf_counter()
        stream = handle.forward.remote("POST", path, body)
        try:
            head = await stream.__anext__()
        except Exception as exc:
            self._metrics.requests.labels(path, model, "503").inc()
            cause = getattr(exc, "cause", exc)  # Ray wraps what the replica raised
            if isinstance(cause, EvalClusterError):
                raise cause from None
            # The replica died or is being replaced: a retryable 503 for the client.
            raise EngineUnavailableError(f"engine for {model!r} failed: {type(cause).__name__}") from None
        self._metrics.latency.labels(path, model).observe(time.perf_counter() - started)
        self._metrics.requests.labels(path, model, str(head["status"])).inc()
        if "text/event-stream" in head["content_type"]:
            return StreamingResponse(_stream_from(head["body"], stream), status_code=head["status"],
                                     media_type=head["content_type"])
        # A whole answer comes with its head, and goes out with a Content-Length, exactly as the engine sent it.
        await _finish(stream)
        return Response(head["body"], status_code=head["status"], media_type=head["content_type"] or None)
