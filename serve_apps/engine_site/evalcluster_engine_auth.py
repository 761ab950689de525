"""The engine key, checked on every route of an engine's API server but /health.

vLLM's own `--api-key` / `VLLM_API_KEY` guards only paths under /v1, /v2, /inference and /cohere: on vLLM 0.32
`POST /invocations` (SageMaker's route) generates without the key, and /tokenize, /generative_scoring,
/scale_elastic_ep and /metrics answer too (tried here). So the supervisor also loads this ASGI middleware into the
engine (`--middleware evalcluster_engine_auth.RequireEngineKey`, vLLM's hook for extra middleware), which
rejects any request without the key except `/health`, the probe Serve's health check sends.

This file runs inside the engine's own Python environment, which has none of the project's packages: standard
library only. The supervisor puts this directory alone on the engine's PYTHONPATH. The simulated engine imports
`authorized` from here so that both engines apply the same rule.
"""

import hashlib
import hmac
import json
import os

KEY_ENV = "VLLM_API_KEY"  # the variable vLLM itself reads its key from
OPEN_PATHS = frozenset({"/health"})
UNAUTHORIZED_BODY = json.dumps({"error": {
    "message": "missing or invalid engine key: engines answer only their supervisor; send requests to the endpoint",
    "type": "authentication_error", "param": None, "code": 401,
}}).encode()


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def authorized(header: str | None, digest: bytes) -> bool:
    """Whether an Authorization header carries the key whose digest is `digest`. Digests are compared in constant
    time, so timing does not tell how much of a guess was right."""
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(key_digest(given.strip()), digest)


class RequireEngineKey:
    """Pure ASGI middleware: 401 for every HTTP request (and a closed websocket) without the engine key."""

    def __init__(self, app):
        key = os.environ.get(KEY_ENV, "")
        if not key:
            # Fail closed: an engine this middleware was asked to guard must not come up open.
            raise RuntimeError(f"{KEY_ENV} is not set; refusing to serve without the engine key")
        self.app = app
        self._digest = key_digest(key)

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        header = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"authorization"), None)
        if authorized(header, self._digest):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # 1008: policy violation
            return
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(UNAUTHORIZED_BODY)).encode()),
            (b"www-authenticate", b"Bearer"),
        ]})
        await send({"type": "http.response.body", "body": UNAUTHORIZED_BODY})
