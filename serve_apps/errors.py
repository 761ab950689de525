"""Serving errors; each maps to one HTTP status and OpenAI error type in the ingress."""

from __future__ import annotations

from cluster.errors import EvalClusterError


class EngineStartupError(EvalClusterError):
    """The engine process died or did not become ready in time. The message carries its last log lines."""

    http_status = 503
    error_type = "engine_startup_error"


class EngineUnavailableError(EvalClusterError):
    """The engine behind a model could not be reached (died, restarting, connection refused)."""

    http_status = 503
    error_type = "engine_unavailable"


class ModelNotFoundError(EvalClusterError):
    http_status = 404
    error_type = "model_not_found"


class BadRequestError(EvalClusterError):
    http_status = 400
    error_type = "invalid_request_error"


class RequestTooLargeError(EvalClusterError):
    http_status = 413
    error_type = "request_too_large"


class AuthenticationError(EvalClusterError):
    http_status = 401
    error_type = "authentication_error"


class WaitCancelled(EvalClusterError):
    """A wait for checkpoints to become ready was cancelled (the sweep that waited is stopping)."""

    http_status = 503
    error_type = "cancelled"
