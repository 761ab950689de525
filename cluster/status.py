"""`evalcluster cluster status`: the nodes, their NPU/GPU/CPU totals and free amounts, and the models each serves.

    print(format_status(cluster_status(model_of=served_model)))

Read from the connected Ray, or straight from the GCS of a cluster `cluster up` started (no driver registered).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cluster.connection import dashboard_url
from cluster.errors import ClusterConnectionError
from cluster.nodes import load_state
from cluster.planner import describe_resources, nodes_from_ray
from cluster.ray_start import int_or_float
from cluster.serve_names import ModelOf, split_replica_class_name


@dataclass(frozen=True)
class NodeStatus:
    """One node as `cluster status` shows it."""

    node_id: str
    address: str
    is_head: bool
    total: dict[str, float]
    available: dict[str, float]
    models: dict[str, int]  # served model → engine replicas on this node


def node_statuses(
    ray_nodes: Sequence[Mapping[str, Any]],
    available: Mapping[str, Mapping[str, float]],
    actors: Sequence[Any],
    model_of: ModelOf | None = None,
) -> list[NodeStatus]:
    """Pure part of `cluster_status`: `ray.nodes()`, free resources per node, ALIVE actors (state API), and which
    Serve deployments serve which model (`model_of`, the serving layer's naming)."""
    models: dict[str, dict[str, int]] = {}
    for actor in actors:
        get = actor.get if isinstance(actor, Mapping) else lambda k, a=actor: getattr(a, k, None)
        split = split_replica_class_name(get("class_name") or "")
        model = model_of(*split) if split and model_of else None
        if model and get("state") == "ALIVE" and get("node_id"):
            per_node = models.setdefault(get("node_id"), {})
            per_node[model] = per_node.get(model, 0) + 1
    return [
        NodeStatus(
            n.node_id, n.address, n.is_head, dict(n.total), dict(n.available), models.get(n.node_id, {})
        )
        for n in nodes_from_ray(ray_nodes, available)
    ]


def cluster_status(address: str | None = None, model_of: ModelOf | None = None) -> list[NodeStatus]:
    """Nodes, their NPU/GPU/CPU totals and free amounts, and the models each serves.

    Uses the connected Ray if `ray.init` was done, else reads the GCS of `address` (default: the cluster
    `cluster up` started) without registering a driver.
    """
    import ray

    state = load_state() if address is None else None
    if state is not None and not ray.is_initialized():
        # The recorded cluster's auth mode and token win over whatever the shell has: they are what it was
        # started with. Refreshing RayConfig makes an already imported Ray see them (as Ray's own token setup
        # does).
        from ray._raylet import Config

        os.environ.update({k: v for k, v in state.client_env().items() if k.startswith("RAY_AUTH_")})
        Config.initialize("")
    if ray.is_initialized():
        from ray._private.state import available_resources_per_node

        gcs_address = ray.get_runtime_context().gcs_address
        ray_nodes, available = ray.nodes(), available_resources_per_node()
    else:
        if address is None and state is None:
            raise ClusterConnectionError(
                "no cluster address given and none started by `evalcluster cluster up`"
            )
        gcs_address = address or state.gcs_address  # type: ignore[union-attr]
        ray_nodes, available = _read_gcs(gcs_address)
    api_url = state.dashboard_url if state is not None and address is None else None
    return node_statuses(ray_nodes, available, _alive_actors(gcs_address, api_url or None), model_of)


def _read_gcs(gcs_address: str) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Node table and free resources straight from the GCS, as `ray.nodes()` gives them (no driver needed)."""
    from ray._private.state import GlobalState
    from ray._raylet import GcsClientOptions

    state = GlobalState()
    try:
        state._initialize_global_state(
            GcsClientOptions.create(
                gcs_address, None, allow_cluster_id_nil=True, fetch_cluster_id_if_nil=False
            )
        )
        return state.node_table(), state.available_resources_per_node()
    except Exception as exc:  # Ray raises several types here; the user needs the address, not the type
        raise ClusterConnectionError(f"could not read the Ray cluster at {gcs_address}: {exc}") from exc
    finally:
        state.disconnect()


def _alive_actors(gcs_address: str, api_url: str | None) -> list[Any]:
    from ray.util.state import list_actors

    try:
        api = api_url or dashboard_url(gcs_address)
        return list_actors(
            address=api, filters=[("state", "=", "ALIVE")], limit=10_000, raise_on_missing_output=False
        )
    except Exception:  # no dashboard (started without it) or state API down: nodes still show, models don't
        return []


def format_status(nodes: Sequence[NodeStatus]) -> str:
    """A plain-text table: one line per node, then cluster totals."""

    def amount(total: Mapping[str, float], free: Mapping[str, float], key: str) -> str:
        return (
            "-" if not total.get(key) else f"{int_or_float(free.get(key, 0.0))}/{int_or_float(total[key])}"
        )

    rows = []
    totals: dict[str, float] = {}
    free: dict[str, float] = {}
    for n in sorted(nodes, key=lambda n: (not n.is_head, n.address)):
        for key in ("NPU", "GPU", "CPU"):
            totals[key] = totals.get(key, 0.0) + n.total.get(key, 0.0)
            free[key] = free.get(key, 0.0) + n.available.get(key, 0.0)
        types = {k: v for k, v in n.total.items() if k.startswith("accelerator_type:")}
        models = ", ".join(f"{m} x{c}" if c > 1 else m for m, c in sorted(n.models.items())) or "-"
        rows.append(
            [
                n.address + (f" ({describe_resources(types)})" if types else ""),
                "head" if n.is_head else "worker",
                *(amount(n.total, n.available, key) for key in ("NPU", "GPU", "CPU")),
                models,
            ]
        )
    rows.append(
        [f"total ({len(nodes)} nodes)", "", *(amount(totals, free, key) for key in ("NPU", "GPU", "CPU")), ""]
    )
    header = ["NODE", "ROLE", "NPU free/total", "GPU free/total", "CPU free/total", "MODELS"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i in (0, 1, 5) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in [header, *rows]
    )
