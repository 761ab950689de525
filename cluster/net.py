"""Addresses and ports: the one `free_port`, and what counts as loopback."""

from __future__ import annotations

import ipaddress
import socket

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free on `host` right now. Someone else may take it before the caller binds it:
    callers that start a server on it retry on a taken port (serve_apps.engine_process.launch_engine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps a server reachable from this machine only. A name other than localhost may
    resolve to anything, so it does not count."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
