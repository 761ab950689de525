"""CPU time of the processes of a simulated cluster, by role: who is who (Ray's actor list, /proc), and how many CPU
seconds each has used (/proc/<pid>/stat).

    roles = actor_roles(sim, model="ckpt")        # {"proxy": [pid], "supervisor": [...], ...}
    ledger = CpuLedger(roles, cluster_pids(sim))  # every other pid of the cluster counts as "ray"
    ledger.start()
    ...                                           # a fixed number of requests
    used_s = ledger.stop()                        # {"proxy": 1.2, "supervisor": 3.4, ..., "ray": 0.8}

Every host of a simulated cluster is a network namespace, not a PID namespace: this process sees every pid, so
the whole cluster's CPU is accounted for here, role by role, with whatever is left ("ray": raylets, GCS, Serve's
controller, idle workers) in one bucket of its own.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from ray.util.state import list_actors

from cluster.simulate import SimulatedCluster

TICKS_PER_S = os.sysconf("SC_CLK_TCK")
SIM_ENGINE_MODULE = "sim_engine"
GUARD_MODULE = "serve_apps.engine_guard"  # its argv holds the engine's: told apart by its own module
INGRESS_APP = "evalcluster"  # serve_apps.endpoint.INGRESS_APP


def cpu_s(pids: Iterable[int]) -> dict[int, float]:
    """utime + stime of each live pid, in seconds (threads included; a pid that is gone is left out)."""
    out = {}
    for pid in pids:
        try:
            # The command name (field 2) may hold spaces and parentheses: split after its closing one.
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / TICKS_PER_S  # fields 14, 15 of proc(5)
    return out


def _parents() -> dict[int, int]:
    parents = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
    return parents


def descendants(roots: Iterable[int]) -> set[int]:
    """Every process below `roots` (not the roots themselves)."""
    children: dict[int, list[int]] = {}
    for pid, parent in _parents().items():
        children.setdefault(parent, []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def cluster_pids(sim: SimulatedCluster) -> set[int]:
    """Every process of the cluster: those on its hosts, and this machine's Ray node with all below it."""
    pids = {pid for host in sim.network.hosts for pid in host.pids()}
    machine = [n.pid for n in sim.state.nodes if n.role == "driver"]
    return pids | set(machine) | descendants(machine)


def actor_roles(sim: SimulatedCluster, model: str | None = None) -> dict[str, list[int]]:
    """Pids of the live actors on the evaluation path, by role. `model`: whose supervisors count (all if None)."""
    roles: dict[str, list[int]] = {"proxy": [], "ingress": [], "supervisor": [], "client": [], "queue": []}
    supervisor = f"ServeReplica:engine:{model}:" if model else "ServeReplica:engine:"
    # The dashboard's address, always: without one, the state API picks the newest Ray on the machine, which
    # need not be ours (other clusters run here).
    actors = list_actors(address=sim.dashboard_url, detail=True, filters=[("state", "=", "ALIVE")], limit=10_000,
                         raise_on_missing_output=False)
    for actor in actors:
        name, pid = actor.class_name or "", actor.pid
        if not pid:
            continue
        if name == "ProxyActor":
            roles["proxy"].append(pid)
        elif name.startswith(f"ServeReplica:{INGRESS_APP}:"):
            roles["ingress"].append(pid)
        elif name.startswith(supervisor):
            roles["supervisor"].append(pid)
        elif name == "EvalClient":
            roles["client"].append(pid)
        elif name == "WorkQueue":
            roles["queue"].append(pid)
    return roles


def pids_titled(pids: Iterable[int], actor_class: str) -> list[int]:
    """The pids among `pids` that run an actor of `actor_class` and have finished its constructor. Ray titles its
    worker processes `ray::CLASS` (a named actor's `ray::NAME:CLASS`; `.method` appended while one runs). Reading
    /proc takes milliseconds, the state API a second or more."""
    title = re.compile(rf"^ray::(?:\S+:)?{re.escape(actor_class)}(?:\.(?!__init__)\w+)?\s*$")
    return sorted(pid for pid in pids if title.match(_cmdline(pid)))


def engine_pids(supervisors: Iterable[int]) -> list[int]:
    """The simulated engines the supervisors started (below each, under its engine guard; the guards, which only
    wait, stay in the "ray" bucket)."""
    return sorted(pid for pid in descendants(supervisors)
                  if SIM_ENGINE_MODULE in (cmd := _cmdline(pid)) and GUARD_MODULE not in cmd)


class CpuLedger:
    """CPU seconds by role between two snapshots. Roles are fixed at `__init__`; every other pid of the cluster
    (found then) counts as "ray"; this process (the driver) as "driver"."""

    def __init__(self, roles: dict[str, list[int]], cluster: set[int]):
        self.roles = {role: list(pids) for role, pids in roles.items()}
        named = {pid for pids in roles.values() for pid in pids}
        self.roles["ray"] = sorted(cluster - named - {os.getpid()})
        self.roles["driver"] = [os.getpid()]
        self._pids = [pid for pids in self.roles.values() for pid in pids]
        self._start: dict[int, float] | None = None

    def start(self) -> None:
        self._start = cpu_s(self._pids)

    def stop(self) -> dict[str, float]:
        """CPU seconds each role used since `start` (a pid gone since counts for nothing)."""
        assert self._start is not None, "CpuLedger.stop before start"
        now = cpu_s(self._pids)
        self.used_s = {p: now[p] - self._start[p] for p in self._pids if p in now and p in self._start}
        return {role: sum(self.used_s.get(p, 0.0) for p in pids) for role, pids in self.roles.items()}

    def top(self, role: str, n: int = 4) -> list[tuple[str, float]]:
        """The `n` processes of `role` that used the most CPU between start and stop: (title, seconds)."""
        used = sorted(((self.used_s.get(p, 0.0), p) for p in self.roles[role]), reverse=True)[:n]
        return [(f"{_cmdline(p).strip()[:50]} [{p}]", s) for s, p in used]
