"""Simulated multi-host Ray clusters on one machine: every node a separate host (its own network namespace).

For tests and benchmarks (in-process, torn down on exit):

    with simulated_cluster(nodes=2, npus_per_node=4, cpus_per_node=2) as sim:
        ray.get(actor_needing_two_npus.remote())      # sees ASCEND_RT_VISIBLE_DEVICES="0,1"
        sim.kill_host(sim.worker_ips[0])              # every process of that host, at once

For development (`evalcluster cluster up --simulate 2:8`, stopped by `evalcluster cluster down`):

    state = simulate_up("2:8")   # head 198.18.K.1 (CPU only) + workers .2, .3 with 8 NPU each

Each node is a `ray start --block` process on its own host (cluster.hosts): the head on the first, one NPU worker
on each of the others, and one more Ray node, with no CPU, on this machine itself (198.18.K.254), so that a
driver started here (a test, a benchmark, `python -m eval_jobs.run` from an operator's shell) has the raylet
Ray requires on its own host; drivers submitted with `ray job submit` run on the head, as on a real cluster.
The head declares no NPU, like a real head: engines land on the NPU workers. The dashboard (and so `ray job
submit`) listens on the head's address. Auth is disabled (a throwaway cluster). Ports inside a host are Ray's
defaults (each host has its own); this machine's node takes its ports from the OS.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.errors import ClusterConnectionError, ConfigError
from cluster.net import free_port
from cluster.hosts import MAX_HOSTS, HostNetwork, SimHost, create_network, destroy_network
from cluster.nodes import ClusterState, StartedNode, cluster_dir, load_state, save_state, state_path
from cluster.ray_start import (
    is_ray_start_running,
    launch_ray_node,
    ray_env,
    ray_start_command,
    stop_pids,
    wait_ray_node,
)

log = logging.getLogger(__name__)

HOST_TEMP_ROOT = Path(tempfile.gettempdir()) / "evalcluster-ray"
MAX_NODES = MAX_HOSTS - 1  # workers; the first host is the head
GCS_PORT = 6379
DASHBOARD_PORT = 8265
# Environment of every simulated node and of the driver that creates one in-process (tests).
SIM_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
    "RAY_USAGE_STATS_ENABLED": "0",  # usage stats would phone home
    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # a simulated node is thrown away, not drained
    # The GCS probes each raylet every health_check_period_ms and declares it dead after
    # health_check_failure_threshold failures in a row (Ray's src/ray/common/ray_config_def.h: 3000 ms, 5). A killed
    # simulated host refuses the probe at once, so it was declared dead 15 s after its death, and every run that
    # loses one waits that long. 1 s probes take 5 s. A live but busy raylet is still never declared dead sooner:
    # each probe may take health_check_timeout_ms (10 s, unchanged) before it counts as failed.
    "RAY_health_check_period_ms": "1000",
}
# Every port from the OS: used where hosts share a network stack (this machine's node, loopback fallback).
RANDOM_PORTS = ["--dashboard-agent-listen-port", "0", "--min-worker-port", "0", "--max-worker-port", "0",
                "--metrics-export-port", "0", "--runtime-env-agent-port", "0", "--node-manager-port", "0",
                "--object-manager-port", "0"]


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


@dataclass
class SimulatedCluster:
    """A running simulated cluster: its hosts, its Ray nodes, and how to reach it from this machine."""

    state: ClusterState
    network: HostNetwork
    npus_per_node: int
    # How each host's node was started (address → argv, environment, log), to start it again after a kill.
    launches: dict[str, tuple[list[str], dict[str, str], Path]] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return self.state.gcs_address

    @property
    def head_ip(self) -> str:
        return self.state.head_ip

    @property
    def machine_ip(self) -> str:
        """This machine's address in the cluster: what a driver started here connects from."""
        return self.network.machine_ip

    @property
    def worker_ips(self) -> list[str]:
        return [n.node_ip for n in self.state.nodes if n.role == "worker"]

    @property
    def dashboard_url(self) -> str:
        return self.state.dashboard_url

    def init_kwargs(self) -> dict[str, Any]:
        """`ray.init(**sim.init_kwargs())` connects a driver on this machine to the cluster."""
        return {"address": self.address, "_node_ip_address": self.machine_ip}

    def cluster_section(self) -> dict[str, str]:
        """The `cluster:` config section of a job run from this machine."""
        return {"address": self.address, "node_ip_address": self.machine_ip}

    def host(self, ip: str) -> SimHost:
        return self.network.host(ip)

    def kill_host(self, ip: str) -> list[int]:
        """SIGKILL every process on the host at `ip` (its Ray node, replicas, engines, client actors)."""
        if not self.network.isolated:
            raise ClusterConnectionError("killing a whole host needs namespaced hosts (root)")
        return self.host(ip).kill()

    def restart_host(self, ip: str, timeout_s: float = 120.0) -> None:
        """Start the Ray node of a killed host again (the host comes back and rejoins, as after a reboot)."""
        argv, env, log_path = self.launches[ip]
        log_path = log_path.with_suffix(f".restart-{time.time_ns()}.log")
        proc = launch_ray_node(argv, env, log_path)
        node = next(n for n in self.state.nodes if n.node_ip == ip)
        self.state.nodes[self.state.nodes.index(node)] = dataclasses.replace(node, pid=proc.pid)
        wait_ray_node(proc, log_path, timeout_s=timeout_s, what=f"simulated node {ip} (restarted)")

    def stop(self) -> None:
        stop_simulated(self.state)

    def __enter__(self) -> SimulatedCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _node_log_dir(log_dir: Path | None) -> Path:
    return log_dir or Path(tempfile.mkdtemp(prefix="evalcluster-sim-"))


def start_simulated(
    nodes: int,
    npus_per_node: int,
    *,
    cpus_per_node: float = 2,
    head_cpus: float = 1,
    object_store_mb: int = 150,
    timeout_s: float = 120.0,
    log_dir: Path | None = None,
    on_started=None,
    detached: bool = False,
) -> SimulatedCluster:
    """Start a head, `nodes` NPU workers and this machine's node, each a `ray start --block` on its own host.

    A `detached` cluster outlives this process (its hosts belong to the head's `ray start`); otherwise a later
    `create_network` removes them once this process is gone. `on_started(state)` is called after each node (the CLI records the state there, so `cluster down` can clean
    up whatever happens next). On any failure everything started so far is stopped.
    """
    if not 1 <= nodes <= MAX_NODES:
        raise ConfigError(f"a simulated cluster has 1 to {MAX_NODES} worker nodes, not {nodes}")
    network = create_network(nodes + 1)
    head, workers = network.hosts[0], network.hosts[1:]
    logs = _node_log_dir(log_dir)
    env = ray_env(auth_mode="disabled", token_path=None, multi_node=True, drain_timeout_s=0)
    env.update(SIM_ENV)
    isolated = network.isolated
    gcs_port = GCS_PORT if isolated else free_port(head.ip)
    dashboard_port = DASHBOARD_PORT if isolated else free_port()
    store = ["--object-store-memory", str(object_store_mb * 1024 * 1024)]
    shared_stack = [] if isolated else RANDOM_PORTS
    state = ClusterState(
        gcs_address=f"{head.ip}:{gcs_port}",
        dashboard_url=f"http://{head.ip if isolated else '127.0.0.1'}:{dashboard_port}",
        head_ip=head.ip,
        auth_mode="disabled",
        simulated=True,
        driver_ip=network.machine_ip,
        network=network.to_dict(),
    )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    started: list[tuple[Any, Path, str]] = []
    launches: dict[str, tuple[list[str], dict[str, str], Path]] = {}

    def launch(host: SimHost | None, role: str, cmd: list[str], resources: dict[str, float], what: str) -> None:
        ip = host.ip if host else network.machine_ip
        log_path = logs / f"sim-{stamp}-{role}-{ip}.log"
        if isolated:
            # A directory per host, as on real machines: nodes sharing one pick the same socket names when
            # started side by side ("bind: Address already in use" on the raylet's socket, seen here).
            cmd = [*cmd, "--temp-dir", str(_host_temp_dir(network, host.name if host else "machine"))]
        argv = host.command(cmd) if host else cmd
        launches[ip] = (argv, env, log_path)
        proc = launch_ray_node(argv, env, log_path)
        if host is None and isolated:
            network.adopt(proc.pid)  # its own session: the pid is its process group
            state.network = network.to_dict()
        state.nodes.append(StartedNode(proc.pid, role, ip, resources, str(log_path), host.netns if host else None))
        started.append((proc, log_path, what))
        if on_started:
            on_started(state)

    try:
        launch(head, "head", ray_start_command(
            head=True, node_ip=head.ip, port=gcs_port, num_cpus=head_cpus, num_gpus=0,
            dashboard_host=head.ip if isolated else "127.0.0.1", dashboard_port=dashboard_port,
            extra_args=[*store, *shared_stack],
        ), {"CPU": float(head_cpus)}, f"simulated head {head.ip}")
        if detached:
            network.set_owner(started[0][0].pid)  # the network lives as long as the head's `ray start`
        state.network = network.to_dict()
        _wait(started[0], timeout_s)
        joining = []
        for host in workers:
            resources = {"NPU": float(npus_per_node)} if npus_per_node else {}
            # One log monitor per machine (the head's) is enough: every node writes under one session directory.
            launch(host, "worker", ray_start_command(
                head=False, address=state.gcs_address, node_ip=host.ip, num_cpus=cpus_per_node, num_gpus=0,
                resources=resources, extra_args=[*store, *shared_stack, "--include-log-monitor=false"],
            ), {**resources, "CPU": float(cpus_per_node)}, f"simulated node {host.ip}")
            joining.append(started[-1])
            if not isolated:
                # Started in parallel on one network stack, two raylets can pick the same "free" port.
                _wait(joining.pop(), timeout_s)
        if isolated:
            launch(None, "driver", ray_start_command(
                head=False, address=state.gcs_address, node_ip=network.machine_ip, num_cpus=0, num_gpus=0,
                extra_args=[*store, *RANDOM_PORTS, "--include-log-monitor=false"],
            ), {}, f"this machine's node {network.machine_ip}")
            joining.append(started[-1])
        for node in joining:  # hosts of their own start side by side
            _wait(node, timeout_s)
    except BaseException:
        stop_simulated(state)
        raise
    return SimulatedCluster(state, network, npus_per_node, launches)


def _host_temp_dir(network: HostNetwork, host: str) -> Path:
    """Ray's temp dir for one host of `network` (short: Unix socket paths inside it are limited to 107 bytes)."""
    path = HOST_TEMP_ROOT / str(network.subnet) / host
    shutil.rmtree(path, ignore_errors=True)  # a previous cluster on the same subnet
    return path


def _wait(node: tuple[Any, Path, str], timeout_s: float) -> None:
    proc, log_path, what = node
    wait_ray_node(proc, log_path, timeout_s=timeout_s, what=what)


def stop_simulated(state: ClusterState, timeout_s: float = 10.0) -> list[int]:
    """Stop every node of a simulated cluster, then remove its hosts (whatever still runs there is killed)."""
    pids = [n.pid for n in state.nodes]
    stopped = stop_pids(pids, timeout_s=timeout_s)
    if state.network:
        destroy_network(HostNetwork.from_dict(state.network))
    return stopped


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
    """A CPU-only head plus `nodes` workers with `npus_per_node` NPU each, every one on a host of its own.

    With `connect`, this process's driver is connected for the duration (Ray must not be initialised already).
    Everything is shut down on exit, also on errors.
    """
    import ray

    if connect and ray.is_initialized():
        raise ClusterConnectionError(
            "simulated_cluster(connect=True): this process is already connected to Ray"
        )
    sim = start_simulated(nodes, npus_per_node, cpus_per_node=cpus_per_node, head_cpus=head_cpus,
                          object_store_mb=object_store_mb)
    try:
        if connect:
            # The driver speaks the cluster's auth mode (disabled), whatever this process's default is.
            os.environ.update(SIM_ENV)
            ray.init(**sim.init_kwargs(), namespace=namespace, log_to_driver=False)
        try:
            yield sim
        finally:
            if connect:
                ray.shutdown()
    finally:
        sim.stop()


def simulate_up(
    spec: str = "2:8",
    *,
    cpus_per_node: float = 2,
    head_cpus: float = 2,
    object_store_mb: int = 200,
    timeout_s: float = 120.0,
) -> ClusterState:
    """Start a simulated cluster as detached `ray start` processes and record them for `cluster_down`.

    `spec` is NODES:NPUS_PER_NODE. Connect a driver from this machine with `ray.init(address=state.gcs_address,
    _node_ip_address=state.driver_ip)`, or config `cluster: {address: ..., node_ip_address: ...}`.
    """
    nodes, npus = parse_simulate_spec(spec)
    existing = load_state()
    if existing and any(is_ray_start_running(n.pid) for n in existing.nodes):
        raise ConfigError(
            f"a cluster started by evalcluster is already running at {existing.gcs_address}; "
            "run `evalcluster cluster down` first"
        )
    try:
        sim = start_simulated(nodes, npus, cpus_per_node=cpus_per_node, head_cpus=head_cpus,
                              object_store_mb=object_store_mb, timeout_s=timeout_s,
                              log_dir=cluster_dir() / "logs", on_started=save_state, detached=True)
    except BaseException:
        state_path().unlink(missing_ok=True)
        raise
    if not sim.network.isolated:
        log.warning("simulated nodes share this machine's loopback: see cluster.hosts.LOOPBACK_WARNING")
    return sim.state
