"""Placement planning over plain data: no Ray needed. The packer tested is the one sweeps ship with (Ledger)."""

from __future__ import annotations

import pytest

from cluster.errors import InfeasiblePlacementError
from cluster.planner import (
    Ledger,
    NodeCapacity,
    check_feasible,
    nodes_from_ray,
    replica_needs,
)
from cluster.watchdog import infeasible_demands
from serve_apps.ingress import served_model


def npu_nodes(
    count: int = 2, npus: float = 4, cpus: float = 2, free_npus: float | None = None
) -> list[NodeCapacity]:
    """`count` NPU workers plus a CPU-only head, like the simulated cluster."""
    head = NodeCapacity("head", "127.0.0.2", {"CPU": 1}, {"CPU": 1}, is_head=True)
    workers = [
        NodeCapacity(
            f"n{i}",
            f"127.0.0.{3 + i}",
            {"NPU": npus, "CPU": cpus},
            {"NPU": npus if free_npus is None else free_npus, "CPU": cpus},
        )
        for i in range(count)
    ]
    return [head, *workers]


def test_replica_needs_per_platform() -> None:
    assert dict(replica_needs("ascend", 4, 1).resources) == {"NPU": 4, "CPU": 1}
    assert dict(replica_needs("cuda", 2, 0.5).resources) == {"GPU": 2, "CPU": 0.5}
    assert dict(replica_needs("cpu", 1, 2).resources) == {"CPU": 2}
    typed = replica_needs("ascend", 1, 1, accelerator_type="Ascend910B")
    assert typed.resources["accelerator_type:Ascend910B"] > 0
    assert typed.describe() == "1 NPU + 1 CPU + type Ascend910B"


def test_tp2_times_4_all_place_on_two_4npu_nodes() -> None:
    ledger = Ledger.of(npu_nodes())
    assert sorted(ledger.reserve("step_100", replica_needs("ascend", 2, 1), 4)) == ["n0", "n0", "n1", "n1"]
    assert ledger.free["n0"]["NPU"] == 0 and ledger.free["n1"]["NPU"] == 0
    assert ledger.reserve("more", replica_needs("ascend", 1, 0), 1) is None  # nothing left
    ledger.release("step_100")
    assert ledger.free["n0"]["NPU"] == 4 and ledger.free["n1"]["NPU"] == 4


def test_tp4_times_2_land_on_different_nodes() -> None:
    ledger = Ledger.of(npu_nodes())
    assert sorted(ledger.reserve("step_200", replica_needs("ascend", 4, 1), 2)) == ["n0", "n1"]


def test_best_fit_goes_by_devices_for_every_replica_not_by_cpus() -> None:
    # A: 8 NPU, few CPUs free; B: 2 NPU; C: 4 NPU. Three tp-2 replicas belong on B, then C, C: A, the only
    # node a tp-8 replica fits, stays whole. (Choosing by free CPU from the second replica on put them on B, A, A.)
    nodes = [NodeCapacity("A", "a", {"NPU": 8, "CPU": 2}, {"NPU": 8, "CPU": 2}),
             NodeCapacity("B", "b", {"NPU": 2, "CPU": 8}, {"NPU": 2, "CPU": 8}),
             NodeCapacity("C", "c", {"NPU": 4, "CPU": 8}, {"NPU": 4, "CPU": 8})]
    ledger = Ledger.of(nodes)
    assert ledger.reserve("small", replica_needs("ascend", 2, 1), 3) == ["B", "C", "C"]
    assert ledger.reserve("big", replica_needs("ascend", 8, 1), 1) == ["A"]


def test_a_lost_node_is_forgotten_and_its_replicas_give_nothing_back() -> None:
    ledger = Ledger.of(npu_nodes())
    assert sorted(ledger.reserve("m", replica_needs("ascend", 4, 1), 2)) == ["n0", "n1"]
    alive = [n for n in npu_nodes() if n.node_id != "n1"]
    assert ledger.keep_only(alive) == ["127.0.0.4"]
    ledger.release("m")
    assert "n1" not in ledger.free and ledger.free["n0"]["NPU"] == 4


def test_tp8_is_infeasible_with_a_clear_message() -> None:
    needs = replica_needs("ascend", 8, 1)
    with pytest.raises(InfeasiblePlacementError) as info:
        check_feasible("step_400", needs, 1, npu_nodes())
    assert str(info.value) == "model step_400 needs 8 NPU on one node; largest node has 4"
    with pytest.raises(InfeasiblePlacementError, match="needs 16 NPU on one node; largest node has 8"):
        check_feasible("step_400", replica_needs("ascend", 16, 1), 1, npu_nodes(npus=8))


def test_more_replicas_than_the_whole_cluster_holds_is_infeasible() -> None:
    with pytest.raises(
        InfeasiblePlacementError, match="needs 3 replicas of 4 NPU \\+ 1 CPU each; .* at most 2"
    ):
        check_feasible("step_300", replica_needs("ascend", 4, 1), 3, npu_nodes())


def test_resources_that_exist_but_never_together_name_the_best_node() -> None:
    with pytest.raises(InfeasiblePlacementError, match="no node has all of that"):
        check_feasible(
            "m",
            replica_needs("ascend", 4, 4),
            1,
            npu_nodes(cpus=2) + [NodeCapacity("c", "c", {"CPU": 8}, {})],
        )


def test_no_npu_anywhere() -> None:
    cpu_only = [NodeCapacity("h", "127.0.0.1", {"CPU": 2}, {"CPU": 2}, is_head=True)]
    with pytest.raises(InfeasiblePlacementError, match="model m needs 1 NPU on one node; largest node has 0"):
        check_feasible("m", replica_needs("ascend", 1, 1), 1, cpu_only)


def test_feasible_but_busy_replicas_wait_instead_of_failing() -> None:
    # Both workers have only 2 of their 4 NPUs free: a tp-4 replica fits nowhere *now* but is not an error.
    nodes = npu_nodes(free_npus=2)
    check_feasible("big", replica_needs("ascend", 4, 1), 1, nodes)
    ledger = Ledger.of(nodes)
    assert ledger.reserve("big", replica_needs("ascend", 4, 1), 1) is None
    assert sorted(ledger.reserve("small", replica_needs("ascend", 2, 1), 2)) == ["n0", "n1"]
    assert "big" not in ledger.held and set(ledger.held) == {"small"}


def test_cpu_platform_packs_by_cpus() -> None:
    nodes = [NodeCapacity("h", "127.0.0.1", {"CPU": 2}, {"CPU": 2}, is_head=True)]
    ledger = Ledger.of([NodeCapacity("h", "h", {"CPU": 4}, {"CPU": 2})])
    needs = replica_needs("cpu", 1, 1)
    assert ledger.reserve("tiny", needs, 2) == ["h", "h"]
    assert ledger.reserve("tiny-2", needs, 1) is None
    with pytest.raises(InfeasiblePlacementError):
        check_feasible("tiny", replica_needs("cpu", 1, 3), 1, nodes)


def test_nodes_from_ray_reads_totals_free_and_head() -> None:
    ray_nodes = [
        {
            "NodeID": "a",
            "Alive": True,
            "NodeManagerAddress": "127.0.0.2",
            "Resources": {"CPU": 1.0, "node:__internal_head__": 1.0},
        },
        {
            "NodeID": "b",
            "Alive": True,
            "NodeManagerAddress": "127.0.0.3",
            "Resources": {"CPU": 2.0, "NPU": 4.0},
        },
        {"NodeID": "dead", "Alive": False, "NodeManagerAddress": "127.0.0.4", "Resources": {"NPU": 8.0}},
    ]
    nodes = nodes_from_ray(ray_nodes, {"a": {"CPU": 1.0}, "b": {"CPU": 1.0}})  # b's NPUs fully reserved
    assert [(n.node_id, n.is_head) for n in nodes] == [("a", True), ("b", False)]
    assert nodes[1].available == {"CPU": 1.0, "NPU": 0.0}


def test_watchdog_flags_only_what_no_node_can_hold() -> None:
    nodes = npu_nodes()
    actors = [
        # A Serve engine replica needing 8 NPU: infeasible, named by its model.
        {
            "name": "SERVE_REPLICA::engine:step_400#EngineSupervisor#a1",
            "class_name": "ServeReplica:engine:step_400:EngineSupervisor",
            "state": "PENDING_CREATION",
            "required_resources": {"NPU": 8.0, "CPU": 1.0},
        },
        {
            "name": "SERVE_REPLICA::engine:step_400#EngineSupervisor#a2",
            "class_name": "x",
            "state": "PENDING_CREATION",
            "required_resources": {"NPU": 8.0, "CPU": 1.0},
        },
        # Pending but feasible (waits for room): not flagged.
        {"name": "", "class_name": "Waiter", "state": "PENDING_CREATION", "required_resources": {"NPU": 4.0}},
        # Inside a placement group: judged through the group.
        {
            "name": "g",
            "class_name": "InGroup",
            "state": "PENDING_CREATION",
            "required_resources": {"NPU_group_abc": 8.0},
        },
        {"name": "", "class_name": "Alive", "state": "ALIVE", "required_resources": {"NPU": 80.0}},
    ]
    groups = [
        {
            "name": "SERVE_REPLICA::engine:step_500#EngineSupervisor#b",
            "state": "PENDING",
            "stats": {"scheduling_state": "INFEASIBLE"},
            "bundles": [{"unit_resources": {"CPU": 1.0}}, {"unit_resources": {"NPU": 16.0}}],
        },
        {"name": "ok", "state": "PENDING", "stats": {"scheduling_state": "QUEUED"}, "bundles": []},
    ]
    assert infeasible_demands(actors, groups, nodes, served_model) == [
        "model step_400 needs 8 NPU on one node; largest node has 4",
        "model step_500 needs 16 NPU on one node; largest node has 4",
    ]
