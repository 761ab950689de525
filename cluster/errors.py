"""The one error hierarchy. Code raises these; the ingress and the CLI turn them into short messages."""

from __future__ import annotations

import sys
from collections.abc import Callable


class EvalClusterError(Exception):
    """Base of every error evalcluster raises on purpose. `http_status` is what the ingress answers with."""

    http_status = 500
    error_type = "internal_error"


class ConfigError(EvalClusterError):
    """A config file, field or flag has a bad value. The message names the file, field and value."""

    http_status = 400
    error_type = "invalid_request_error"


class InfeasiblePlacementError(EvalClusterError):
    """A replica needs more devices on one node than any node of the cluster has."""

    http_status = 503
    error_type = "infeasible_placement"


class ClusterConnectionError(EvalClusterError):
    """Ray could not be started or reached."""


def run_command(body: Callable[[], int]) -> int:
    """A command's exit status: the body's own, 2 with a one-line message for a known error, 130 on Ctrl-C (by
    then everything the body started has been stopped on the way out, and finished samples are on disk)."""
    try:
        return body()
    except EvalClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; an evaluation resumes when run again with the same output", file=sys.stderr)
        return 130


class HostLostError(EvalClusterError):
    """A host of the cluster died and what ran there cannot be placed on the hosts that are left."""

    http_status = 503
    error_type = "host_lost"
