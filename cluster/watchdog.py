"""The watchdog: what Ray accepted after a deploy but can never place, failed within seconds.

`cluster.planner.check_feasible` refuses what it can see before a deploy; what slips through (actors or
placement groups no alive node could ever hold, e.g. after a host was lost) Ray would queue forever and Serve
would show as DEPLOYING. The watchdog looks at what is pending and fails with the planner's message:

    serve.run_many(apps, wait_for_applications_running=False)
    watch_for_infeasible(timeout_s=10, until=lambda: all_apps_running())

`infeasible_demands` is pure, over the state API's rows, so it is unit-tested without Ray.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from cluster.connection import dashboard_url
from cluster.errors import InfeasiblePlacementError
from cluster.planner import NodeCapacity, fits, infeasible_message, live_nodes
from cluster.serve_names import ModelOf, split_replica_name


def _serve_subject(name: str, model_of: ModelOf | None) -> str | None:
    """How a message names a Serve replica actor or placement group; None if `name` is not one."""
    if (split := split_replica_name(name)) is None:
        return None
    app, deployment = split
    model = model_of(app, deployment) if model_of else None
    return f"model {model}" if model else f"Serve deployment {deployment} of app {app or 'default'}"


def _field(obj: Any, key: str) -> Any:
    """State API rows are dataclasses; tests pass dicts. Read either."""
    return obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)


def _subject(name: str | None, class_name: str | None, model_of: ModelOf | None) -> str:
    name = name or ""
    return _serve_subject(name, model_of) or f"actor {name or class_name or '?'}"


def infeasible_demands(
    actors: Iterable[Any],
    placement_groups: Iterable[Any],
    nodes: Sequence[NodeCapacity],
    model_of: ModelOf | None = None,
) -> list[str]:
    """Messages for pending actors and placement groups that no alive node could ever hold (pure, for tests).

    Actors count when PENDING_CREATION with `required_resources` that fit no node's total; resources named
    `*_group_*` belong to a placement group (judged through the group instead). Placement groups count when
    Ray's own scheduler marked them INFEASIBLE.
    """
    messages: list[str] = []
    for actor in actors:
        if _field(actor, "state") != "PENDING_CREATION":
            continue
        required = _field(actor, "required_resources") or {}
        needs = {k: float(v) for k, v in required.items() if "_group_" not in k}
        if not needs or any(fits(needs, n.total) for n in nodes):
            continue
        subject = _subject(_field(actor, "name"), _field(actor, "class_name"), model_of)
        messages.append(infeasible_message(subject, needs, nodes))
    for group in placement_groups:
        stats = _field(group, "stats") or {}
        if _field(group, "state") != "PENDING" or stats.get("scheduling_state") != "INFEASIBLE":
            continue
        bundles = [b.get("unit_resources", {}) for b in _field(group, "bundles") or []]
        # Name the bundle that fits nowhere; if each fits alone, the group must be packed (STRICT_PACK): the
        # sum.
        needs = next((b for b in bundles if not any(fits(b, n.total) for n in nodes)), None)
        if needs is None:
            needs = {}
            for bundle in bundles:
                needs = {k: needs.get(k, 0.0) + bundle.get(k, 0.0) for k in {*needs, *bundle}}
        subject = _subject(_field(group, "name"), None, model_of)
        messages.append(infeasible_message(subject, needs, nodes))
    return list(dict.fromkeys(messages))  # one message per model even with several replicas pending


def find_infeasible(model_of: ModelOf | None = None, address: str | None = None) -> list[str]:
    """One look at the connected cluster: messages for everything pending that can never be placed."""
    from ray.util.state import list_actors, list_placement_groups

    address = address or dashboard_url()
    actors = list_actors(
        address=address,
        filters=[("state", "=", "PENDING_CREATION")],
        detail=True,
        raise_on_missing_output=False,
    )
    groups = list_placement_groups(
        address=address, filters=[("state", "=", "PENDING")], detail=True, raise_on_missing_output=False
    )
    return infeasible_demands(actors, groups, live_nodes(), model_of)


def watch_for_infeasible(
    timeout_s: float = 10.0,
    *,
    poll_s: float = 0.5,
    until: Callable[[], bool] | None = None,
    model_of: ModelOf | None = None,
) -> None:
    """After a deploy: raise InfeasiblePlacementError as soon as something pending can never be placed.

    Returns quietly after `timeout_s`, or earlier once `until()` is true (e.g. every application is RUNNING).
    Ray detects infeasible placement groups at once and pending actors within seconds (docs/platform-notes.md), so 10 s is
    enough; Serve itself would stay DEPLOYING forever.
    """
    deadline = time.monotonic() + timeout_s
    address = dashboard_url()
    while True:
        messages = find_infeasible(model_of, address)
        if messages:
            raise InfeasiblePlacementError("; ".join(messages))
        if (until is not None and until()) or time.monotonic() >= deadline:
            return
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
