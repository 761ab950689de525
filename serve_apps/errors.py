"""Serving errors; each maps to one HTTP status and OpenAI error type in the ingress."""

from __future__ import annotations

from cluster.errors import EvalClusterError


class EngineStartupError(EvalClusterError, http_status=503, error_type="engine_startup_error"):
    """The engine process died or did not become ready in time. The message carries its last log lines."""


class EngineUnavailableError(EvalClusterError, http_status=503, error_type="engine_unavailable"):
    """The engine behind a model could not be reached (died, restarting, connection refused)."""


class ModelNotFoundError(EvalClusterError, http_status=404, error_type="model_not_found"):
    """No model of that name is served."""


class BadRequestError(EvalClusterError, http_status=400, error_type="invalid_request_error"):
    """The request body is not one the ingress can route (not JSON, no `model`)."""


class RequestTooLargeError(EvalClusterError, http_status=413, error_type="request_too_large"):
    """The request body is larger than serve.max_request_bytes."""


class AuthenticationError(EvalClusterError, http_status=401, error_type="authentication_error"):
    """The endpoint's API key is missing or wrong."""


class WaitCancelled(EvalClusterError, http_status=503, error_type="cancelled"):
    """A wait for checkpoints to become ready was cancelled (the sweep that waited is stopping)."""
