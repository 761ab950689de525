"""The one error hierarchy. Code raises these; the ingress and the CLI turn them into short messages."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable


class EvalClusterError(Exception):
    """Base of every error evalcluster raises on purpose. `http_status` and `error_type` are what the ingress
    answers with (OpenAI's error `type`); a subclass names both in its class line:

        class ModelNotFoundError(EvalClusterError, http_status=404, error_type="model_not_found"): ...
    """

    http_status = 500
    error_type = "internal_error"

    def __init_subclass__(cls, *, http_status: int | None = None, error_type: str | None = None,
                          **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if http_status is not None:
            cls.http_status = http_status
        if error_type is not None:
            cls.error_type = error_type


class ConfigError(EvalClusterError, http_status=400, error_type="invalid_request_error"):
    """A config file, field or flag has a bad value. The message names the file, field and value."""


class InfeasiblePlacementError(EvalClusterError, http_status=503, error_type="infeasible_placement"):
    """A replica needs more devices on one node than any node of the cluster has."""


class ClusterConnectionError(EvalClusterError):
    """Ray could not be started or reached."""


def run_command(body: Callable[[], int]) -> int:
    """A command's exit status: the body's own, 2 with a one-line message for a known error, 130 on Ctrl-C (by
    then everything the body started has been stopped on the way out, and finished samples are on disk).

    SIGINT and SIGTERM (`kill`, `ray job stop`) stop it the way Ctrl-C does, also where it was started with SIGINT
    ignored: a shell without job control starts background commands that way (POSIX), and Python then leaves
    SIGINT ignored, so `kill -INT` would do nothing."""
    previous = {stop: signal.signal(stop, signal.default_int_handler) for stop in (signal.SIGINT, signal.SIGTERM)}
    try:
        return body()
    except EvalClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; an evaluation resumes when run again with the same output", file=sys.stderr)
        return 130
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, handler)


class HostLostError(EvalClusterError, http_status=503, error_type="host_lost"):
    """A host of the cluster died and what ran there cannot be placed on the hosts that are left."""
