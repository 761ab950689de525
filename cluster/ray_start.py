"""One `ray start --block` process: its argv and environment, started detached, awaited, stopped by pid.

`cluster.nodes` (`evalcluster cluster up/down`) and `cluster.simulate` (simulated hosts) start their nodes
with these. A node is stopped through the pid of its `ray start --block`, never `ray stop` (which would take
down every Ray on the machine, other users' and test clusters included): SIGTERM makes `ray start --block`
tear its node's processes down, and Ray ties them to it with PR_SET_PDEATHSIG besides.

Why the environment is spelled out (docs/platform-notes.md, Ray 2.60): Ray rewrites 127.0.0.1 to the machine's
external address unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0; token auth is on by default and clients must be
told the mode; a `ray start --address` that can't reach its head waits ~14 minutes; Ray workers use the Python
`ray start` ran with.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from cluster.errors import ClusterConnectionError, ConfigError
from cluster.paths import REPO_ROOT, evalcluster_home

AuthMode = Literal["token", "disabled"]
STARTED_MARKER = "Ray runtime started."


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
    # Where a driver on the machine that started the node attaches: inherited by the node, every job driver it runs
    # would attach to that other node's raylet (its socket is a file, reachable from any network namespace) and
    # register an address its peers cannot reach back; the first call with a large argument then hangs.
    env.pop("EVALCLUSTER_NODE_IP_ADDRESS", None)
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
