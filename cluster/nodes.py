"""`evalcluster cluster up/down/status`: start Ray nodes declaring their NPUs, stop exactly those, show them.

    state = cluster_up(head=True, npus="auto", accelerator_type="Ascend910B")   # this machine: the head
    state = cluster_up(address="10.0.0.1:6379", npus="auto", node_ip_address="10.0.0.2", token_path=...)
    cluster_down()                    # (what runs where: cluster.status)

Each node is a `ray start --block` process started in its own session, its pid recorded in `<evalcluster
home>/cluster/state.json`; `cluster_down` signals those pids only, so other Ray instances on the same machine
(other users, test clusters) survive, unlike `ray stop`. SIGTERM makes `ray start --block` tear its node's
processes down, and Ray ties them to it with PR_SET_PDEATHSIG besides.

Why the environment is spelled out (docs/platform-notes.md, Ray 2.60): Ray rewrites 127.0.0.1 to the machine's external
address unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0; token auth is on by default and clients must be told the
mode; a `ray start --address` that can't reach its head waits ~14 minutes; Ray workers use the Python `ray
start` ran with.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from cluster.connection import ensure_auth_token
from cluster.errors import ClusterConnectionError, ConfigError
from cluster.hosts import HostNetwork, destroy_network
from cluster.paths import REPO_ROOT, evalcluster_home

AuthMode = Literal["token", "disabled"]
STARTED_MARKER = "Ray runtime started."


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


# -- starting and stopping `ray start --block` processes -----------------------------------------------------


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


def ray_env(
    *, auth_mode: AuthMode, token_path: str | None, multi_node: bool, drain_timeout_s: float
) -> dict[str, str]:
    """Env of a `ray start`: explicit auth, loopback-safe addressing, no telemetry, our Python first."""
    env = dict(os.environ)
    # Ray workers run whatever `python` the node's processes find: put this project's interpreter first.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_AUTH_MODE"] = auth_mode
    env.pop("RAY_AUTH_TOKEN", None)
    if token_path:
        env["RAY_AUTH_TOKEN_PATH"] = token_path
    else:
        env.pop("RAY_AUTH_TOKEN_PATH", None)
    # "0" keeps a single local node on 127.0.0.1; multi-node needs "1" (and then non-127.0.0.1 addresses).
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "1" if multi_node else "0"
    env["RAY_USAGE_STATS_ENABLED"] = "0"  # usage stats would phone home
    # SIGTERM first drains the node (Ray default 30 s); `cluster down` takes the whole node away anyway.
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = str(drain_timeout_s)
    env["PYTHONUNBUFFERED"] = "1"  # the start marker must reach the log file while we wait for it
    # Jobs run from an uploaded copy of the repo without the git-ignored data dir and engine environment: they
    # find both through the environment their node was started with.
    env.setdefault("EVALCLUSTER_HOME", str(evalcluster_home().resolve()))
    # ... and write their reports where `cluster up` was run, not into Ray's temporary copy.
    env.setdefault("EVALCLUSTER_RUNS_ROOT", str(Path.cwd()))
    local_engine = REPO_ROOT / ".venv-engine" / "bin" / "python"
    if local_engine.exists():
        env.setdefault("EVALCLUSTER_ENGINE_PYTHON", str(local_engine))
    env.pop("RAY_ADDRESS", None)  # `ray start --head` would otherwise try to join it
    return env


def ray_start_command(
    *,
    head: bool,
    address: str | None = None,
    node_ip: str | None = None,
    port: int | None = None,
    num_cpus: float | None = None,
    num_gpus: int | None = None,
    resources: Mapping[str, float] | None = None,
    dashboard_host: str = "127.0.0.1",
    dashboard_port: int | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """argv of one blocking `ray start`, run with this interpreter (`python -m ray.scripts.scripts`)."""
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--disable-usage-stats"]
    if head:
        cmd += ["--head", "--dashboard-host", dashboard_host]
        if port is not None:
            cmd += ["--port", str(port)]
        if dashboard_port is not None:
            cmd += ["--dashboard-port", str(dashboard_port)]
    else:
        if not address:
            raise ConfigError("joining a cluster needs the head's address (--address HOST:PORT)")
        cmd += ["--address", address]
    if node_ip:
        cmd += ["--node-ip-address", node_ip]
    if num_cpus is not None:
        cmd += ["--num-cpus", int_or_float(num_cpus)]
    if num_gpus is not None:
        cmd += ["--num-gpus", str(num_gpus)]
    if resources:
        cmd += ["--resources", json.dumps(dict(resources))]
    return cmd + list(extra_args)


def int_or_float(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def launch_ray_node(cmd: list[str], env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a blocking `ray start` detached, output to `log_path`; pair with `wait_ray_node`.

    Its own session: it outlives the CLI, and its process group is ours to kill.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            cmd,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def wait_ray_node(proc: subprocess.Popen[bytes], log_path: Path, *, timeout_s: float, what: str) -> None:
    """Wait until `ray start` reports its node up; else stop it and raise ClusterConnectionError (with log).

    The bound matters: a join whose head is unreachable would otherwise wait ~14 minutes before failing.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if STARTED_MARKER in log_path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise ClusterConnectionError(
                f"{what} failed to start (ray start exited {proc.returncode}); "
                f"log {log_path}:\n{_tail(log_path)}"
            )
        time.sleep(0.2)
    stop_pids([proc.pid], timeout_s=3)  # a half-started node has nothing to drain
    raise ClusterConnectionError(
        f"{what} was not up within {timeout_s:.0f} s (head unreachable or machine overloaded?); "
        f"log {log_path}:\n{_tail(log_path)}"
    )


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def is_ray_start_running(pid: int) -> bool:
    """True if `pid` still runs a `ray start` (a recorded pid may since belong to an unrelated process)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z" and b"ray.scripts.scripts" in cmdline and b"start" in cmdline


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)  # only succeeds for our own children; others are reaped by init
    except ChildProcessError:
        pass


def stop_pids(pids: Sequence[int], timeout_s: float = 30.0) -> list[int]:
    """SIGTERM each live `ray start` pid (its node shuts down); SIGKILL the group after `timeout_s`."""
    live = [pid for pid in pids if is_ray_start_running(pid)]
    for pid in live:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for pid in live:
            _reap(pid)
        if not any(is_ray_start_running(pid) for pid in live):
            break
        time.sleep(0.2)
    for pid in live:
        if is_ray_start_running(pid):
            try:
                os.killpg(pid, signal.SIGKILL)  # start_new_session made pid its own process group
            except ProcessLookupError:
                pass
        _reap(pid)
    return live


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
    if state and head and any(is_ray_start_running(n.pid) for n in state.nodes):
        raise ConfigError(
            f"a cluster started by evalcluster is already running at {state.gcs_address}; "
            "run `evalcluster cluster down` first"
        )
    local = head and node_ip_address in (None, "127.0.0.1")
    node_ip = "127.0.0.1" if local else node_ip_address
    token = ensure_token(token_path) if auth_mode == "token" else None
    env = ray_env(auth_mode=auth_mode, token_path=token, multi_node=not local, drain_timeout_s=5.0)
    resources = node_resources(npus, accelerator_type)
    cmd = ray_start_command(
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
    proc = launch_ray_node(cmd, env, log)
    wait_ray_node(proc, log, timeout_s=timeout_s, what=what)
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
    stopped = stop_pids(pids[:-1], timeout_s) + stop_pids(pids[-1:], timeout_s) if pids else []
    if state.network:
        destroy_network(HostNetwork.from_dict(state.network))
    state_path().unlink(missing_ok=True)
    return stopped
