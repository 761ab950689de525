"""Placement planning: what a replica needs, whether any node can ever hold it, where replicas fit now.

Every replica holds all its devices on one node (design.md §1: tensor parallelism stays inside a node), so a
request is feasible only if one node's *total* resources cover one replica. Ray itself would queue an
infeasible request forever (docs/platform-notes.md: Serve stays DEPLOYING and only warns after 30 s), hence the
checks here:

    needs = replica_needs("ascend", tensor_parallel_size=4, cpus_per_replica=1)     # {"NPU": 4, "CPU": 1}
    nodes = live_nodes()                                                              # needs a Ray connection
    check_feasible("step_400", needs, num_replicas=2, nodes=nodes)                    # raises: unplaceable
    ledger = Ledger.of(nodes); ledger.reserve("step_400", needs, 2)                  # node ids, or None: no room now

Everything but `live_nodes` is a pure function over plain data, so it is unit-tested without Ray. What slips
through after a deploy (actors or placement groups Ray cannot place) is caught by `cluster.watchdog`, with the
same message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cluster.errors import InfeasiblePlacementError

Resources = dict[str, float]
Platform = Literal["ascend", "cuda", "cpu"]

# Ray stores resources as fixed-point numbers with 4 decimals; compare with that tolerance.
EPSILON = 1e-4
DEVICE_KEYS = ("NPU", "GPU")
ACCELERATOR_TYPE_PREFIX = "accelerator_type:"


@dataclass(frozen=True)
class ReplicaNeeds:
    """Resources one engine replica reserves, all on one node, e.g. {"NPU": 4, "CPU": 1}."""

    resources: Mapping[str, float]

    @property
    def device_key(self) -> str | None:
        """The accelerator resource this replica uses ("NPU", "GPU"), None for a CPU-only replica."""
        return next((k for k in DEVICE_KEYS if self.resources.get(k, 0) > 0), None)

    @property
    def device_count(self) -> float:
        return self.resources.get(self.device_key, 0.0) if self.device_key else 0.0

    def describe(self) -> str:
        """E.g. "4 NPU + 1 CPU"; accelerator types read "type Ascend910B" rather than a 0.001 resource."""
        return describe_resources(self.resources)


def describe_resources(resources: Mapping[str, float]) -> str:
    parts = []
    for key, value in sorted(resources.items(), key=lambda kv: _resource_order(kv[0])):
        if key.startswith(ACCELERATOR_TYPE_PREFIX):
            parts.append(f"type {key[len(ACCELERATOR_TYPE_PREFIX) :]}")
        elif value > 0:
            parts.append(f"{_number(value)} {key}")
    return " + ".join(parts) or "nothing"


def _resource_order(key: str) -> tuple[int, str]:
    order = {"NPU": 0, "GPU": 1, "CPU": 2, "memory": 4}
    return (3 if key not in order else order[key], key)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def replica_needs(
    platform: Platform,
    tensor_parallel_size: int,
    cpus_per_replica: float,
    accelerator_type: str | None = None,
) -> ReplicaNeeds:
    """What one replica reserves: its tensor-parallel devices plus host CPUs (the engine's compute on cpu)."""
    if tensor_parallel_size < 1:
        raise ValueError(f"tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
    resources: Resources = {}
    if platform == "ascend":
        resources["NPU"] = float(tensor_parallel_size)
    elif platform == "cuda":
        resources["GPU"] = float(tensor_parallel_size)
    elif platform != "cpu":
        raise ValueError(f"unknown platform {platform!r}")
    if cpus_per_replica > 0:
        resources["CPU"] = float(cpus_per_replica)
    if accelerator_type:
        # Ray's accelerator_type option asks for a sliver of this node resource (docs/platform-notes.md).
        resources[ACCELERATOR_TYPE_PREFIX + accelerator_type] = 0.001
    return ReplicaNeeds(resources)


@dataclass(frozen=True)
class NodeCapacity:
    """One alive Ray node: what it declares (`total`) and what is unreserved right now (`available`)."""

    node_id: str
    address: str
    total: Mapping[str, float]
    available: Mapping[str, float]
    is_head: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)


def fits(needs: Mapping[str, float], capacity: Mapping[str, float]) -> bool:
    """True if `capacity` covers every positive amount in `needs`."""
    return all(capacity.get(key, 0.0) + EPSILON >= value for key, value in needs.items() if value > 0)


def _subtract(capacity: Mapping[str, float], needs: Mapping[str, float]) -> Resources:
    left = dict(capacity)
    for key, value in needs.items():
        left[key] = left.get(key, 0.0) - value
    return left


def check_feasible(
    model_name: str, needs: ReplicaNeeds, num_replicas: int, nodes: Sequence[NodeCapacity]
) -> None:
    """Raise InfeasiblePlacementError if no node can ever hold one replica (or the cluster all replicas).

    Feasibility is judged on node totals, not what is free: replicas that only wait for others to finish are
    not an error (a Ledger reports them as not fitting yet).
    """
    if not any(fits(needs.resources, n.total) for n in nodes):
        raise InfeasiblePlacementError(infeasible_message(f"model {model_name}", needs.resources, nodes))
    # Even an empty cluster must hold all replicas at once, else the last ones would wait forever.
    empty = Ledger({n.node_id: dict(n.total) for n in nodes})
    held = 0
    while held < num_replicas and empty.reserve(f"{model_name}#{held}", needs, 1) is not None:
        held += 1
    if held < num_replicas:
        raise InfeasiblePlacementError(
            f"model {model_name} needs {num_replicas} replicas of {needs.describe()} each; "
            f"the whole cluster can hold at most {held} at once"
        )


def infeasible_message(subject: str, needs: Mapping[str, float], nodes: Sequence[NodeCapacity]) -> str:
    """Why no node can hold `needs`, e.g. "model step_400 needs 16 NPU on one node; largest node has 8"."""
    if not nodes:
        return f"{subject} needs {describe_resources(needs)} on one node; the cluster has no alive nodes"
    # Name the first resource that no single node has enough of: that is the actionable part.
    for key, value in sorted(needs.items(), key=lambda kv: _resource_order(kv[0])):
        if value <= 0:
            continue
        largest = max(n.total.get(key, 0.0) for n in nodes)
        if largest + EPSILON < value:
            if key.startswith(ACCELERATOR_TYPE_PREFIX):
                return (
                    f"{subject} needs accelerator type {key[len(ACCELERATOR_TYPE_PREFIX) :]}; no node has it"
                )
            return f"{subject} needs {_number(value)} {key} on one node; largest node has {_number(largest)}"
    # Every resource exists somewhere, but never all together on one node.
    best = max(nodes, key=lambda n: tuple(n.total.get(k, 0.0) for k in sorted(needs, key=_resource_order)))
    wanted = {k: best.total.get(k, 0.0) for k in needs}
    return (
        f"{subject} needs {describe_resources(needs)} on one node; no node has all of that "
        f"(largest: {describe_resources(wanted)} on {best.address})"
    )


@dataclass
class Ledger:
    """What a scheduler's own deployments hold, per node, out of what the nodes had free when it started.

    Ray reserves a replica's devices only once the replica is scheduled, so reading Ray's free resources right
    after a deploy would count the same devices twice: a scheduler keeps this ledger instead.
    """

    free: dict[str, dict[str, float]]
    addresses: dict[str, str] = field(default_factory=dict)  # node id → address
    held: dict[str, list[tuple[str, dict[str, float]]]] = field(default_factory=dict)

    @classmethod
    def of(cls, nodes: Sequence[NodeCapacity]) -> Ledger:
        return cls({n.node_id: dict(n.available) for n in nodes}, {n.node_id: n.address for n in nodes})

    def reserve(self, name: str, needs: ReplicaNeeds, replicas: int) -> list[str] | None:
        """Best fit for every replica (the node it leaves with the fewest free devices, so whole nodes stay whole
        for large replicas), or nothing (None) when they don't all fit now."""
        trial = {node: dict(res) for node, res in self.free.items()}
        device = needs.device_key or "CPU"
        placed = []
        for _ in range(replicas):
            candidates = [n for n, res in trial.items() if fits(needs.resources, res)]
            if not candidates:
                return None
            node = min(candidates, key=lambda n: trial[n].get(device, 0.0))
            trial[node] = _subtract(trial[node], needs.resources)
            placed.append(node)
        self.free = trial
        self.held[name] = [(node, dict(needs.resources)) for node in placed]
        return placed

    def release(self, name: str) -> None:
        for node, resources in self.held.pop(name, []):
            if node not in self.free:
                continue  # a lost node: nothing to give back
            for key, value in resources.items():
                self.free[node][key] = self.free[node].get(key, 0.0) + value

    def keep_only(self, alive: Sequence[NodeCapacity]) -> list[str]:
        """Forget the nodes that are no longer alive; returns their addresses."""
        ids = {n.node_id for n in alive}
        gone = [node for node in self.free if node not in ids]
        for node in gone:
            del self.free[node]
        return [self.addresses[node] for node in gone]


def nodes_from_ray(
    ray_nodes: Iterable[Mapping[str, Any]], available: Mapping[str, Mapping[str, float]]
) -> list[NodeCapacity]:
    """NodeCapacity per alive node of `ray.nodes()`; free resources from `available` (node id → resources)."""
    result = []
    for node in ray_nodes:
        if not node.get("Alive", node.get("alive", False)):
            continue
        node_id = node["NodeID"]
        total = {k: float(v) for k, v in (node.get("Resources") or {}).items()}
        # Ray omits a resource from `available` once it is fully reserved: that means 0, not "unknown".
        free = {k: float(available.get(node_id, {}).get(k, 0.0)) for k in total}
        is_head = any(k.startswith("node:__internal_head__") for k in total)
        result.append(
            NodeCapacity(
                node_id=node_id,
                address=node.get("NodeManagerAddress", ""),
                total=total,
                available=free,
                is_head=is_head,
                labels=dict(node.get("Labels") or {}),
            )
        )
    return result


def live_nodes() -> list[NodeCapacity]:
    """The connected Ray cluster's alive nodes with their current free resources (needs `ray.init` done)."""
    import ray
    from ray._private.state import (
        available_resources_per_node,
    )  # DeveloperAPI; no public per-node view exists

    return nodes_from_ray(ray.nodes(), available_resources_per_node())
