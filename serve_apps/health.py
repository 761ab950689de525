"""Checkpoints a lost host leaves unservable: no replica running, and none that can be placed anywhere else.

    watch = ServingWatch(["step_100", "step_200"])
    watch.check()    # raises HostLostError once a checkpoint has been stranded for `grace_checks` checks

Serve replaces a dead replica by itself, on any node with room; clients retry meanwhile, so losing a host is
normally survived. What Serve cannot do is place a replica when no remaining node has its devices free (or the
replica is pinned to the lost node): it then waits forever, and so would every sample of that checkpoint. This
watch turns that wait into an error that names the lost host and what is missing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from cluster.errors import HostLostError
from cluster.health import NodeWatch
from cluster.planner import NodeCapacity, describe_resources, fits
from serve_apps.ingress import ENGINE_DEPLOYMENT, engine_app_name

CHECK_EVERY_S = 2.0
# Consecutive checks a checkpoint must look stranded: Serve needs a moment to notice a dead replica and to
# schedule its replacement, and a replacement is not yet on a node while Ray is placing it.
GRACE_CHECKS = 3


class ServingWatch:
    """Checks, at most every CHECK_EVERY_S, whether a lost host stranded one of `models`."""

    def __init__(self, models: Iterable[str], grace_checks: int = GRACE_CHECKS) -> None:
        self.models = list(models)
        self.grace_checks = grace_checks
        self._nodes = NodeWatch()
        self._strikes: dict[str, int] = {}
        self._next = 0.0

    def check(self) -> None:
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + CHECK_EVERY_S
        lost = self._nodes.lost()
        if not lost:
            return
        from ray.serve.context import _get_global_client

        apps = _get_global_client().get_serve_details().get("applications", {})
        for model in self.models:
            app = apps.get(engine_app_name(model))
            reason = stranded(model, app, self._nodes.alive, lost) if app else None
            self._strikes[model] = self._strikes.get(model, 0) + 1 if reason else 0
            if reason and self._strikes[model] >= self.grace_checks:
                raise HostLostError(reason)


def stranded(model: str, app: Mapping[str, Any], alive: list[NodeCapacity], lost: Mapping[str, str]) -> str | None:
    """Why `model` can no longer be served (its app's details as Serve's controller gives them), or None."""
    deployment = app.get("deployments", {}).get(ENGINE_DEPLOYMENT)
    if deployment is None:
        return None
    alive_ids = {n.node_id for n in alive}
    replicas = deployment.get("replicas", [])
    # Running, or placed on a live node and starting: it will serve.
    if any(r.get("node_id") in alive_ids and r.get("state") in ("RUNNING", "STARTING", "UPDATING", "RECOVERING")
           for r in replicas):
        return None
    options = deployment["deployment_config"].get("ray_actor_options") or {}
    needs = {"CPU": float(options.get("num_cpus") or 0), "GPU": float(options.get("num_gpus") or 0),
             **{k: float(v) for k, v in (options.get("resources") or {}).items()}}
    needs = {k: v for k, v in needs.items() if v}
    if any(fits(needs, n.available) for n in alive):
        return None  # Serve will place it: it just has not yet
    hosts = ", ".join(sorted(set(lost.values())))
    pinned = [k.removeprefix("node:") for k in needs if k.startswith("node:")]
    wanted = {k: v for k, v in needs.items() if not k.startswith("node:")}
    where = f"its replicas are pinned to {', '.join(pinned)}, which is gone" if set(pinned) & set(lost.values()) \
        else f"no remaining host has {describe_resources(wanted)} free ({_free_summary(wanted, alive)})"
    return f"host {hosts} was lost; checkpoint {model!r} has no replica left and {where}"


def _free_summary(wanted: Mapping[str, float], alive: list[NodeCapacity]) -> str:
    device = next((k for k in wanted if k != "CPU"), "CPU")
    parts = [f"{n.address}: {n.available.get(device, 0):g} of {n.total.get(device, 0):g} {device} free"
             for n in alive if n.total.get(device)]
    return "; ".join(parts) or f"no host has {device}"
