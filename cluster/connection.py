"""Connecting to Ray: an embedded loopback-only local Ray by default, or an existing cluster; where its
dashboard (state API) is."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from cluster.config import ClusterConfig
from cluster.errors import ClusterConnectionError
from cluster.paths import default_auth_token_path

log = logging.getLogger(__name__)


def auth_token_path() -> Path:
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or default_auth_token_path())


def ensure_auth_token() -> Path:
    """Create the token file once (0600); Ray refuses an empty or missing RAY_AUTH_TOKEN_PATH file."""
    path = auth_token_path()
    if not path.exists() or not path.read_text().strip():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path


def connect(cfg: ClusterConfig) -> bool:
    """Start or join Ray per `cfg`. Returns True when this call started an embedded Ray (caller shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if os.environ.get("RAY_AUTH_MODE") == "token":
        ensure_auth_token()
    try:
        if address:
            # Jobs submitted with `ray job submit` land here with RAY_ADDRESS set by the job supervisor.
            # A driver on a machine whose Ray node is not at its default address (a simulated cluster's host
            # side) must name its node, or Ray looks for a raylet that isn't there.
            ip = cfg.node_ip_address or os.environ.get("EVALCLUSTER_NODE_IP_ADDRESS")
            node_ip = {"_node_ip_address": ip} if ip else {}
            ray.init(address=address, namespace=cfg.namespace, log_to_driver=False, **node_ip)
            return False
        ray.init(
            # "local": a new instance even when `ray start` left /tmp/ray/ray_current_cluster behind, which a bare
            # ray.init() would try to join.
            address="local",
            num_cpus=cfg.num_cpus,
            resources=cfg.resources or None,
            include_dashboard=cfg.include_dashboard,
            dashboard_host="127.0.0.1",
            namespace=cfg.namespace,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
        )
    except ConnectionError as exc:
        raise ClusterConnectionError(f"cannot reach the Ray cluster at {address}: {exc}") from exc
    log.info("started an embedded local Ray on 127.0.0.1")
    return True


@contextlib.contextmanager
def ray_session(cfg: ClusterConfig) -> Iterator[None]:
    """`connect`, and on exit shut down what this call started (an embedded Ray), leave a joined cluster running."""
    import ray

    started = connect(cfg)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def dashboard_url(gcs_address: str | None = None) -> str:
    """The dashboard (state API server) URL of the cluster at `gcs_address` (default: the connected one).

    Read from the GCS directly: Ray's own helper rewrites 127.0.0.1 to the machine's external address
    (docs/platform-notes.md), and without an address the state API picks the *latest* cluster on the machine,
    maybe somebody else's.
    """
    import ray
    from ray._private import ray_constants
    from ray._raylet import GcsClient

    address = gcs_address or ray.get_runtime_context().gcs_address
    try:
        value = GcsClient(address=address).internal_kv_get(
            ray_constants.DASHBOARD_ADDRESS.encode(), ray_constants.KV_NAMESPACE_DASHBOARD, timeout=10
        )
    except Exception as exc:  # RpcError and friends: the caller needs the address, not Ray's type
        raise ClusterConnectionError(
            f"could not read the dashboard address from the Ray cluster at {address}: {exc}"
        ) from exc
    if not value:
        raise ClusterConnectionError(
            f"the Ray cluster at {address} runs no dashboard (needed for its state API)"
        )
    return f"http://{value.decode()}"
