"""`evalcluster cluster up/down/status`: start Ray nodes declaring their NPUs, stop exactly those, show them.

    state = cluster_up(head=True, npus="auto", accelerator_type="Ascend910B")   # this machine: the head
    state = cluster_up(address="10.0.0.1:6379", npus="auto", node_ip_address="10.0.0.2", token_path=...)
    cluster_down()                    # (what runs where: cluster.status)

Each node is a `ray start --block` process (`cluster.ray_start`) started in its own session, its pid recorded
in `<evalcluster home>/cluster/state.json`; `cluster_down` signals those pids only, so other Ray instances on
the same machine (other users, test clusters) survive, unlike `ray stop`.
"""

from __future__ import annotations

import glob
import json
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from cluster.connection import ensure_auth_token
from cluster import ray_start
from cluster.errors import ConfigError
from cluster.hosts import HostNetwork, destroy_network
from cluster.paths import evalcluster_home
from cluster.ray_start import AuthMode



def cluster_dir() -> Path:
    return evalcluster_home() / "cluster"


def state_path() -> Path:
    return cluster_dir() / "state.json"


# -- what a node declares ------------------------------------------------------------------------------------


def count_npus() -> int:
    """Ascend NPUs on this machine: `npu-smi info -l` when installed, else the /dev/davinciN device files."""
    if shutil.which("npu-smi"):
        try:
            out = subprocess.run(["npu-smi", "info", "-l"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Total Count" and value.strip().isdigit():
                return int(value.strip())
        ids = [line for line in out.splitlines() if line.split(":")[0].strip() == "NPU ID"]
        if ids:
            return len(ids)
    # davinci_manager and friends are control devices, not NPUs: only davinci<digits> count.
    return len([p for p in glob.glob("/dev/davinci[0-9]*") if Path(p).name[len("davinci") :].isdigit()])


def node_resources(npus: int | Literal["auto"] | None, accelerator_type: str | None) -> dict[str, float]:
    """Custom resources for `ray start --resources`: NPU count and Ray's accelerator_type:X marker."""
    resources: dict[str, float] = {}
    count = count_npus() if npus == "auto" else npus
    if npus == "auto" and not count:
        raise ConfigError(
            "--npus auto: found no NPU on this machine (no npu-smi, no /dev/davinci*); pass --npus N"
        )
    if count:
        resources["NPU"] = float(count)
    if accelerator_type:
        resources[f"accelerator_type:{accelerator_type}"] = 1.0
    return resources


# -- what this machine started, recorded for `cluster down` and `cluster status` -----------------------------


@dataclass(frozen=True)
class StartedNode:
    """One `ray start --block` process this machine started."""

    pid: int
    role: Literal["head", "worker", "driver"]  # driver: a node without resources where drivers attach
    node_ip: str
    resources: dict[str, float]
    log: str
    netns: str | None = None  # the simulated host it runs on (cluster.hosts)


@dataclass
class ClusterState:
    """What `cluster up` started, so `cluster down` and `cluster status` find it again."""

    gcs_address: str
    dashboard_url: str
    head_ip: str
    auth_mode: AuthMode
    token_path: str | None = None
    simulated: bool = False
    nodes: list[StartedNode] = field(default_factory=list)
    driver_ip: str | None = None  # this machine's address in the cluster, for drivers started here
    network: dict[str, Any] | None = None  # the simulated hosts (cluster.hosts.HostNetwork), removed at `down`

    def client_env(self) -> dict[str, str]:
        """Environment a client (driver, `ray job submit`, `ray status`) needs to reach this cluster."""
        env = {
            "RAY_ADDRESS": self.gcs_address,
            "RAY_AUTH_MODE": self.auth_mode,
            "RAY_USAGE_STATS_ENABLED": "0",
            # Read by Ray at import: "0" keeps a 127.0.0.1 cluster on loopback, other addresses need "1".
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0" if self.head_ip == "127.0.0.1" else "1",
        }
        if self.token_path:
            env["RAY_AUTH_TOKEN_PATH"] = self.token_path
        if self.driver_ip:
            env["EVALCLUSTER_NODE_IP_ADDRESS"] = self.driver_ip  # read by cluster.connection
        return env


def load_state() -> ClusterState | None:
    path = state_path()
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    data["nodes"] = [StartedNode(**n) for n in data.get("nodes", [])]
    return ClusterState(**data)


def save_state(state: ClusterState) -> None:
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    tmp.replace(path)  # atomic: a crash never leaves half a state file


# -- the CLI-facing API --------------------------------------------------------------------------------------


def ensure_token(token_path: str | Path | None = None) -> str:
    """Path of the cluster's auth token file.

    Without `token_path`: $RAY_AUTH_TOKEN_PATH, else `<evalcluster home>/ray/auth_token` (the file
    `cluster.connection` uses too, so a driver started later finds the same token), created (0600) if missing.
    A given `token_path` must exist: on a joining machine it is the copy of the head's token.
    """
    if token_path:
        path = Path(token_path)
        if not path.exists() or not path.read_text().strip():
            raise ConfigError(
                f"token file {path} is missing or empty (copy the head's token file to this machine)"
            )
        return str(path.resolve())
    return str(ensure_auth_token().resolve())


def cluster_up(
    *,
    head: bool = True,
    address: str | None = None,
    npus: int | Literal["auto"] | None = None,
    gpus: int | None = None,
    cpus: float | None = None,
    accelerator_type: str | None = None,
    node_ip_address: str | None = None,
    port: int = 6379,
    dashboard_host: str = "127.0.0.1",
    dashboard_port: int = 8265,
    auth_mode: AuthMode = "token",
    token_path: str | None = None,
    timeout_s: float = 90.0,
) -> ClusterState:
    """Start this machine's Ray node: a head (`head=True`) or a worker joining `address`.

    A head without `node_ip_address` (or with 127.0.0.1) is a local single-node cluster kept on loopback; give
    the machine's address for a head that other machines join. Token auth (default) uses one token file for
    the whole cluster: the head creates it, joining machines pass a copy as `token_path`.
    """
    if head == bool(address):
        raise ConfigError("cluster up: either start a head or give --address of one to join, not both")
    state = load_state()
    if state and head and any(ray_start.is_ray_start_running(n.pid) for n in state.nodes):
        raise ConfigError(
            f"a cluster started by evalcluster is already running at {state.gcs_address}; "
            "run `evalcluster cluster down` first"
        )
    local = head and node_ip_address in (None, "127.0.0.1")
    node_ip = "127.0.0.1" if local else node_ip_address
    token = ensure_token(token_path) if auth_mode == "token" else None
    env = ray_start.ray_env(auth_mode=auth_mode, token_path=token, multi_node=not local, drain_timeout_s=5.0)
    resources = node_resources(npus, accelerator_type)
    cmd = ray_start.ray_start_command(
        head=head,
        address=address,
        node_ip=node_ip,
        port=port if head else None,
        num_cpus=cpus,
        num_gpus=gpus,
        resources=resources,
        dashboard_host=dashboard_host,
        dashboard_port=dashboard_port,
    )
    role: Literal["head", "worker"] = "head" if head else "worker"
    log = cluster_dir() / "logs" / f"ray-start-{role}-{int(time.time())}.log"
    what = "the Ray head" if head else f"this worker joining {address}"
    proc = ray_start.launch_ray_node(cmd, env, log)
    ray_start.wait_ray_node(proc, log, timeout_s=timeout_s, what=what)
    started = StartedNode(pid=proc.pid, role=role, node_ip=node_ip or "", resources=resources, log=str(log))
    if head or state is None:
        state = ClusterState(
            gcs_address=f"{node_ip}:{port}" if head else str(address),
            dashboard_url=f"http://{dashboard_host}:{dashboard_port}" if head else "",
            head_ip=(node_ip or "") if head else str(address).rsplit(":", 1)[0],
            auth_mode=auth_mode,
            token_path=token,
        )
    state.nodes.append(started)
    save_state(state)
    return state


def cluster_down(timeout_s: float = 30.0) -> list[int]:
    """Stop every node `cluster up` (or `simulate_up`) started on this machine; returns the pids stopped."""
    state = load_state()
    if state is None:
        return []
    # Workers first: a head that goes first leaves them retrying to reach it.
    pids = [n.pid for n in state.nodes if n.role != "head"][::-1] + [
        n.pid for n in state.nodes if n.role == "head"
    ]
    stop = ray_start.stop_pids
    stopped = stop(pids[:-1], timeout_s) + stop(pids[-1:], timeout_s) if pids else []
    if state.network:
        destroy_network(HostNetwork.from_dict(state.network))
    state_path().unlink(missing_ok=True)
    return stopped
