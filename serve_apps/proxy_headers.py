"""Request headers that Serve's HTTP proxy would obey, removed before it reads them.

Ray Serve's proxy takes a per-request total deadline from the client's `x-request-timeout-seconds` header
(ray/serve/_private/http_util.py `parse_request_timeout_header`, Ray 2.60), before any deployment sees the request:
a client (or a proxy in front of us) sending it would have a long answer cut mid-stream and count as an endpoint
failure, although the endpoint has no total deadline on purpose (README, "Timeouts bound silence, not length").
The ingress would see the header too late, so this ASGI middleware runs inside the proxy itself: Serve wraps its
HTTP app in the middlewares returned by the function named in `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`, which
`serve_apps/__init__.py` sets before Ray starts.
"""

from __future__ import annotations

from typing import Any

# Lower-case, as ASGI gives header names.
DROPPED_HEADERS = frozenset({b"x-request-timeout-seconds"})
CALLBACK = "serve_apps.proxy_headers.proxy_middlewares"


class DropProxyTimeoutHeaders:
    """Pure ASGI middleware: HTTP requests reach the proxy's app without the DROPPED_HEADERS."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") == "http":
            headers = scope.get("headers") or []
            kept = [(name, value) for name, value in headers if name.lower() not in DROPPED_HEADERS]
            if len(kept) != len(headers):
                scope = {**scope, "headers": kept}
        await self.app(scope, receive, send)


def proxy_middlewares() -> list[Any]:
    """What Serve's proxy calls (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH): the middlewares around its HTTP app."""
    from starlette.middleware import Middleware

    return [Middleware(DropProxyTimeoutHeaders)]
