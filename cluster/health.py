"""Noticing hosts that die: the nodes a run started with, compared with the ones Ray still counts alive.

    watch = NodeWatch()          # the nodes alive now
    ...
    watch.lost()                 # {node_id: address} of those that died since
"""

from __future__ import annotations

from cluster.planner import NodeCapacity, live_nodes


class NodeWatch:
    """The cluster's nodes at the start of a run, and which of them have died since."""

    def __init__(self) -> None:
        self.known = {n.node_id: n.address for n in live_nodes()}
        self.alive: list[NodeCapacity] = []

    def lost(self) -> dict[str, str]:
        """Nodes alive at the start and dead now (node id → address); refreshes `alive` (with free resources)."""
        self.alive = live_nodes()
        ids = {n.node_id for n in self.alive}
        self.known.update({n.node_id: n.address for n in self.alive})  # nodes that joined later count too
        return {node_id: address for node_id, address in self.known.items() if node_id not in ids}
