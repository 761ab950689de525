"""Separate simulated hosts on one machine: one Linux network namespace per host, each with its own loopback.

    net = create_network(3)               # hosts 198.18.K.1 (head), .2, .3, and this machine at 198.18.K.254
    proc = subprocess.Popen(net.hosts[1].command(["python", "-m", "http.server", "--bind", "198.18.K.2"]))
    net.hosts[1].kill()                   # every process of that host, as if it lost power
    destroy_network(net)

Why namespaces: nodes that share one loopback hide every bug of the form "this works because the client and the
server happen to be on the same machine" (a client actor posting to the head's 127.0.0.1 from another host).
In a namespace, 127.0.0.1 is that host's own, and another host is reached only at its address, as between real
machines. The hosts hang off a bridge in the head's namespace; this machine (the root namespace, where an
operator's shell, a test process or a benchmark runs) is one more port on that bridge at 198.18.K.254. The
addresses come from 198.18.0.0/15 (RFC 2544, reserved for benchmarking) and exist only on these links, so no
traffic leaves the machine. K is picked per network, so several simulated clusters can run side by side.

Processes inside are stopped by pid (`ip netns pids`), never by name: `ray stop` would stop every Ray on the
machine. A network whose owner died without cleaning up (a crashed test run) is removed by the next
`create_network`. Without root, `create_network(..., fallback=True)` hands out loopback aliases (127.0.0.2, …)
instead and says what that cannot catch.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cluster.errors import ClusterConnectionError

log = logging.getLogger(__name__)

NETNS_PREFIX = "evalcluster"
SUBNET_PREFIX = "198.18"
MAX_HOSTS = 250  # .1 … .250 of one /24; .254 is this machine
HOST_SIDE_IP = 254
# Owner records and the lock that keeps two creators from picking the same subnet.
STATE_DIR = Path("/run/evalcluster-hosts")
LOOPBACK_WARNING = (
    "network namespaces are unavailable (not root?): simulated hosts share this machine's loopback, so a client "
    "that reaches another host's 127.0.0.1 by accident is not caught"
)


@dataclass(frozen=True)
class SimHost:
    """One simulated host: its network namespace (None for a loopback-alias host) and its address."""

    name: str
    ip: str
    netns: str | None = None

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run on this host (`ip netns exec` enters the namespace, then execs: the pid is argv's)."""
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else list(argv)

    def pids(self) -> list[int]:
        """Every process running on this host (none can be told apart for a loopback-alias host)."""
        if not self.netns:
            return []
        out = _ip("netns", "pids", self.netns, check=False).stdout
        return [int(p) for p in out.split()]

    def kill(self, sig: int = signal.SIGKILL) -> list[int]:
        """Signal every process on this host; returns their pids."""
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return pids


@dataclass
class HostNetwork:
    """A set of simulated hosts joined by one bridge; `machine_ip` is this machine's address on it."""

    subnet: int | None  # K of 198.18.K.0/24; None: loopback aliases
    hosts: list[SimHost]
    machine_ip: str
    owner_pid: int = field(default_factory=os.getpid)
    # Process groups on this machine's own side (its Ray node): outside every namespace, so named here to be
    # stopped with the network.
    adopted: list[int] = field(default_factory=list)

    @property
    def isolated(self) -> bool:
        return self.subnet is not None

    def host(self, ip: str) -> SimHost:
        for h in self.hosts:
            if h.ip == ip:
                return h
        raise KeyError(f"no simulated host at {ip}")

    def set_owner(self, pid: int) -> None:
        """The process whose life keeps this network: a detached cluster hands it to its head's `ray start`."""
        self.owner_pid = pid
        if self.isolated:
            _write_owner(self)

    def adopt(self, pgid: int) -> None:
        """Stop process group `pgid` (started on this machine for this network) whenever the network goes."""
        self.adopted.append(pgid)
        if self.isolated:
            _write_owner(self)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> HostNetwork:
        return cls(data["subnet"], [SimHost(**h) for h in data["hosts"]], data["machine_ip"], data["owner_pid"],
                   list(data.get("adopted", [])))


def namespaces_available() -> bool:
    """True when this process may create network namespaces (root with iproute2)."""
    return os.geteuid() == 0 and _ip("netns", "list", check=False).returncode == 0


def create_network(count: int, *, fallback: bool = True) -> HostNetwork:
    """`count` hosts (the first is the head) on a fresh bridge, or loopback aliases when namespaces can't be made
    and `fallback` allows it."""
    if not 1 <= count <= MAX_HOSTS:
        raise ClusterConnectionError(f"a simulated network has 1 to {MAX_HOSTS} hosts, not {count}")
    if not namespaces_available():
        if not fallback:
            raise ClusterConnectionError("network namespaces need root and iproute2 (`ip netns`)")
        log.warning(LOOPBACK_WARNING)
        hosts = [SimHost(f"h{i}", f"127.0.0.{2 + i}") for i in range(count)]
        return HostNetwork(None, hosts, machine_ip=hosts[0].ip)
    with _lock():
        clean_stale()
        subnet = _free_subnet()
        net = HostNetwork(subnet, [], machine_ip=f"{SUBNET_PREFIX}.{subnet}.{HOST_SIDE_IP}")
        _write_owner(net)  # before any namespace exists: a crash from here on leaves something clean_stale finds
        try:
            _build(net, count)
        except BaseException:
            destroy_network(net)
            raise
    return net


def _build(net: HostNetwork, count: int) -> None:
    base = f"{SUBNET_PREFIX}.{net.subnet}"
    head_ns = _netns_name(net.subnet, 0)
    _ip("netns", "add", head_ns)
    net.hosts.append(SimHost("h0", f"{base}.1", head_ns))
    _ip("-n", head_ns, "link", "add", "br0", "type", "bridge")
    _ip("-n", head_ns, "addr", "add", f"{base}.1/24", "dev", "br0")
    for dev in ("lo", "br0"):
        _ip("-n", head_ns, "link", "set", dev, "up")
    for i in range(1, count):
        ns = _netns_name(net.subnet, i)
        _ip("netns", "add", ns)
        net.hosts.append(SimHost(f"h{i}", f"{base}.{1 + i}", ns))
        # Made inside the namespaces: port names are local to each, so clusters side by side never collide.
        _ip("-n", head_ns, "link", "add", f"p{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("-n", head_ns, "link", "set", f"p{i}", "master", "br0", "up")
        _ip("-n", ns, "addr", "add", f"{base}.{1 + i}/24", "dev", "eth0")
        for dev in ("lo", "eth0"):
            _ip("-n", ns, "link", "set", dev, "up")
    # This machine's port: the only name in the shared root namespace, unique by subnet; it goes away with the
    # head's namespace (a veth pair dies with either end).
    machine_dev = f"ecsim{net.subnet}"
    _ip("link", "add", machine_dev, "type", "veth", "peer", "name", "pm", "netns", head_ns)
    _ip("-n", head_ns, "link", "set", "pm", "master", "br0", "up")
    _ip("addr", "add", f"{net.machine_ip}/24", "dev", machine_dev)
    _ip("link", "set", machine_dev, "up")


def destroy_network(net: HostNetwork, *, grace_s: float = 5.0) -> None:
    """SIGTERM every process on every host, SIGKILL what is left after `grace_s`, then remove the namespaces."""
    if not net.isolated:
        return
    hosts = [h for h in net.hosts if h.netns]
    for h in hosts:
        h.kill(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(h.pids() for h in hosts) and time.monotonic() < deadline:
        time.sleep(0.2)
    for h in hosts:
        h.kill(signal.SIGKILL)
    _kill_groups(net.adopted)
    _remove_namespaces(net.subnet)


def clean_stale() -> list[str]:
    """Remove the networks whose owner process is gone (a crashed run): their processes first, then them."""
    records = _read_records()
    removed = []
    for subnet in sorted(_subnets_in_use()):
        record = records.get(subnet, {})
        owner = record.get("owner_pid")
        if owner is not None and _alive(owner):
            continue
        _kill_groups(record.get("adopted", []))
        for ns in _namespaces_of(subnet):
            for pid in SimHost("", "", ns).kill():
                log.warning("stopped pid %d left in stale simulated host %s", pid, ns)
        _remove_namespaces(subnet)
        removed.append(f"{SUBNET_PREFIX}.{subnet}.0/24")
    return removed


def _remove_namespaces(subnet: int | None) -> None:
    for ns in _namespaces_of(subnet):
        _ip("netns", "del", ns, check=False)
    _ip("link", "del", f"ecsim{subnet}", check=False)  # normally gone with the head's namespace already
    (STATE_DIR / f"{subnet}.json").unlink(missing_ok=True)


def _netns_name(subnet: int | None, index: int) -> str:
    return f"{NETNS_PREFIX}-{subnet}-h{index}"


def _namespaces_of(subnet: int | None) -> list[str]:
    pattern = re.compile(rf"^{NETNS_PREFIX}-{subnet}-h\d+$")
    return [ns for ns in _all_namespaces() if pattern.match(ns)]


def _all_namespaces() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _subnets_in_use() -> set[int]:
    """Subnets with a namespace or an owner record (a half-built network has either)."""
    pattern = re.compile(rf"^{NETNS_PREFIX}-(\d+)-h\d+$")
    found = {int(m.group(1)) for ns in _all_namespaces() if (m := pattern.match(ns))}
    return found | set(_read_records())


def _free_subnet() -> int:
    used = _subnets_in_use()
    # Addresses already on this machine's own interfaces (someone else's use of the range) are avoided too.
    addrs = _ip("-4", "-o", "addr", "show", check=False).stdout
    used |= {int(m.group(1)) for m in re.finditer(rf"{re.escape(SUBNET_PREFIX)}\.(\d+)\.", addrs)}
    for subnet in range(1, 255):
        if subnet not in used:
            return subnet
    raise ClusterConnectionError(f"no free {SUBNET_PREFIX}.K.0/24 subnet left for simulated hosts")


def _write_owner(net: HostNetwork) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    path = STATE_DIR / f"{net.subnet}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"owner_pid": net.owner_pid, "adopted": net.adopted}))
    tmp.replace(path)


def _read_records() -> dict[int, dict]:
    """Subnet → its owner record ({"owner_pid", "adopted"})."""
    records = {}
    for path in STATE_DIR.glob("*.json") if STATE_DIR.exists() else []:
        with contextlib.suppress(ValueError, OSError, KeyError):
            data = json.loads(path.read_text())
            records[int(path.stem)] = {"owner_pid": int(data["owner_pid"]), "adopted": data.get("adopted", [])}
    return records


def _kill_groups(pgids: list[int]) -> None:
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(STATE_DIR / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise ClusterConnectionError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")
    return result
