"""Simulated multi-node clusters on one machine: several Ray nodes on loopback addresses, each declaring NPUs.

For tests (in-process, torn down on exit):

    with simulated_cluster(nodes=2, npus_per_node=4, cpus_per_node=2) as sim:
        ray.get(actor_needing_two_npus.remote())      # sees ASCEND_RT_VISIBLE_DEVICES="0,1"

For development (`evalcluster cluster up --simulate 2:8`, stopped by `evalcluster cluster down`):

    state = simulate_up("2:8")   # head 127.0.0.2 (CPU only) + workers 127.0.0.3, 127.0.0.4 with 8 NPU each

Why these addresses (facts.md, Ray 2.60): several nodes on one machine need
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1, and with it Ray rewrites 127.0.0.1 to the machine's external address;
other loopback addresses (127.0.0.2, …) it keeps, so all traffic stays on loopback. A driver must then say
which node it sits on (`_node_ip_address`, the head's address): from this machine, 127.0.0.2 is reached *from*
127.0.0.1, which no node has. The head declares no NPU, like a real head: engines land on the NPU workers.
Auth is disabled (a throwaway cluster); ports come from the OS so clusters of different users and test
sessions on the same machine don't collide.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from cluster.errors import ClusterConnectionError, ConfigError
from cluster.nodes import (
    ClusterState,
    StartedNode,
    cluster_dir,
    is_ray_start_running,
    launch_ray_node,
    load_state,
    ray_env,
    ray_start_command,
    save_state,
    state_path,
    stop_pids,
    wait_ray_node,
)

HEAD_IP = "127.0.0.2"
MAX_NODES = 250  # 127.0.0.3 … 127.0.0.252
# Environment of every simulated node and of the driver that creates one in-process (tests).
SIM_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
    "RAY_USAGE_STATS_ENABLED": "0",  # usage stats would phone home
    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # a simulated node is thrown away, not drained
}


def parse_simulate_spec(spec: str) -> tuple[int, int]:
    """ "NODES:NPUS" (e.g. "2:8") → (2, 8)."""
    nodes_s, sep, npus_s = spec.partition(":")
    try:
        nodes, npus = int(nodes_s), int(npus_s)
    except ValueError:
        nodes = npus = -1
    if not sep or not 1 <= nodes <= MAX_NODES or npus < 0:
        raise ConfigError(
            f"--simulate {spec!r}: expected NODES:NPUS_PER_NODE, e.g. 2:8 (1 to {MAX_NODES} nodes)"
        )
    return nodes, npus


def worker_ips(nodes: int) -> list[str]:
    """Loopback addresses of the simulated NPU workers: 127.0.0.3, 127.0.0.4, …"""
    if not 1 <= nodes <= MAX_NODES:
        raise ConfigError(f"a simulated cluster has 1 to {MAX_NODES} worker nodes, not {nodes}")
    return [f"127.0.0.{3 + i}" for i in range(nodes)]


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free on `host` right now (a small race, fine for throwaway clusters)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class SimulatedCluster:
    """A running in-process simulated cluster."""

    cluster: Any  # ray.cluster_utils.Cluster
    address: str
    head_ip: str
    worker_ips: list[str]
    dashboard_url: str
    npus_per_node: int
    env: dict[str, str] = field(default_factory=dict)

    def init_kwargs(self) -> dict[str, Any]:
        """`ray.init(**sim.init_kwargs())` connects a driver to this cluster (on the head's node address)."""
        return {"address": self.address, "_node_ip_address": self.head_ip}


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


@contextmanager
def simulated_cluster(
    nodes: int = 2,
    npus_per_node: int = 4,
    cpus_per_node: float = 2,
    head_cpus: float = 1,
    *,
    connect: bool = True,
    object_store_mb: int = 150,
    namespace: str | None = None,
) -> Iterator[SimulatedCluster]:
    """A CPU-only head on 127.0.0.2 plus `nodes` workers on 127.0.0.3… with `npus_per_node` NPU each.

    With `connect`, this process's driver is connected for the duration (Ray must not be initialised already).
    Everything is shut down on exit, also on errors.
    """
    import ray
    from ray.cluster_utils import Cluster

    if connect and ray.is_initialized():
        raise ClusterConnectionError(
            "simulated_cluster(connect=True): this process is already connected to Ray"
        )
    ips = worker_ips(nodes)
    store = object_store_mb * 1024 * 1024
    # Ports from the OS: the defaults (8265, 52365, 10002-19999) collide with other Ray instances on the
    # machine.
    common: dict[str, Any] = {
        "object_store_memory": store,
        "dashboard_agent_listen_port": 0,
        "min_worker_port": 0,
        "max_worker_port": 0,
    }
    dashboard_port = free_port()
    with _environ(SIM_ENV):
        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                **common,
                "num_cpus": head_cpus,
                "num_gpus": 0,
                "node_ip_address": HEAD_IP,
                "include_dashboard": True,  # the state API (watchdog, status) is served by the dashboard
                "dashboard_host": "127.0.0.1",
                "dashboard_port": dashboard_port,
            },
        )
        try:
            for ip in ips:
                resources = {"NPU": float(npus_per_node)} if npus_per_node else {}
                cluster.add_node(
                    **common, num_cpus=cpus_per_node, num_gpus=0, resources=resources, node_ip_address=ip
                )
            cluster.wait_for_nodes()
            sim = SimulatedCluster(
                cluster=cluster,
                address=cluster.address,
                head_ip=HEAD_IP,
                worker_ips=ips,
                dashboard_url=f"http://127.0.0.1:{dashboard_port}",
                npus_per_node=npus_per_node,
                env=dict(SIM_ENV),
            )
            if connect:
                ray.init(**sim.init_kwargs(), namespace=namespace)
            try:
                yield sim
            finally:
                if connect:
                    ray.shutdown()
        finally:
            cluster.shutdown()


def simulate_up(
    spec: str = "2:8",
    *,
    cpus_per_node: float = 2,
    head_cpus: float = 2,
    object_store_mb: int = 200,
    timeout_s: float = 120.0,
) -> ClusterState:
    """Start a simulated cluster as detached `ray start` processes and record them for `cluster_down`.

    `spec` is NODES:NPUS_PER_NODE. The head (127.0.0.2) gets `head_cpus` CPUs and no NPU; each worker gets
    `cpus_per_node` CPUs. Connect a driver with `ray.init(address=state.gcs_address,
    _node_ip_address=state.head_ip)` and RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 (`state.client_env()`).
    """
    nodes, npus = parse_simulate_spec(spec)
    existing = load_state()
    if existing and any(is_ray_start_running(n.pid) for n in existing.nodes):
        raise ConfigError(
            f"a cluster started by evalcluster is already running at {existing.gcs_address}; "
            "run `evalcluster cluster down` first"
        )
    env = ray_env(auth_mode="disabled", token_path=None, multi_node=True, drain_timeout_s=0)
    env.update(SIM_ENV)
    port, dashboard_port, client_port = free_port(HEAD_IP), free_port(), free_port(HEAD_IP)
    store = str(object_store_mb * 1024 * 1024)
    # Random ports for everything per node, and one log monitor for the machine (the head's): all nodes share
    # the head's session directory, and each extra monitor costs memory (facts.md).
    common = [
        "--object-store-memory",
        store,
        "--dashboard-agent-listen-port",
        "0",
        "--min-worker-port",
        "0",
        "--max-worker-port",
        "0",
    ]
    state = ClusterState(
        gcs_address=f"{HEAD_IP}:{port}",
        dashboard_url=f"http://127.0.0.1:{dashboard_port}",
        head_ip=HEAD_IP,
        auth_mode="disabled",
        simulated=True,
    )
    logs = cluster_dir() / "logs"
    stamp = int(time.time())
    try:
        head_cmd = ray_start_command(
            head=True,
            node_ip=HEAD_IP,
            port=port,
            num_cpus=head_cpus,
            num_gpus=0,
            dashboard_port=dashboard_port,
            extra_args=[*common, "--ray-client-server-port", str(client_port)],
        )
        head_log = logs / f"sim-{stamp}-head.log"
        head = launch_ray_node(head_cmd, env, head_log)
        state.nodes.append(StartedNode(head.pid, "head", HEAD_IP, {"CPU": float(head_cpus)}, str(head_log)))
        save_state(state)  # from here on `cluster down` can clean up, whatever happens next
        wait_ray_node(head, head_log, timeout_s=timeout_s, what=f"simulated head {HEAD_IP}")
        # One worker at a time: started in parallel, two raylets on this machine can pick the same "free" port
        # and one dies with "bind: Address already in use" (seen here).
        for ip in worker_ips(nodes):
            resources = {"NPU": float(npus)} if npus else {}
            cmd = ray_start_command(
                head=False,
                address=state.gcs_address,
                node_ip=ip,
                num_cpus=cpus_per_node,
                num_gpus=0,
                resources=resources,
                extra_args=[*common, "--include-log-monitor=false"],
            )
            log = logs / f"sim-{stamp}-{ip}.log"
            proc = launch_ray_node(cmd, env, log)
            state.nodes.append(
                StartedNode(proc.pid, "worker", ip, {**resources, "CPU": float(cpus_per_node)}, str(log))
            )
            save_state(state)
            wait_ray_node(proc, log, timeout_s=timeout_s, what=f"simulated node {ip}")
    except BaseException:
        pids = [n.pid for n in state.nodes]
        stop_pids(pids[1:], timeout_s=10)
        stop_pids(pids[:1], timeout_s=10)
        state_path().unlink(missing_ok=True)
        raise
    return state
