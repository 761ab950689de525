"""Simulated Ray clusters whose nodes are separate hosts (CPU head + 2 workers × 4 NPU, each in its own network
namespace).

The hosts themselves (own loopback, reachable by address, killed as a whole, cleaned up after a crash),
capacities, NPU visibility, the watchdog, the `cluster up --simulate` / `cluster down` lifecycle with a
`ray job submit` on it, and the pure parts of cluster.nodes and cluster.ray_start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402

from cluster import nodes as nodes_mod  # noqa: E402
from cluster.errors import ConfigError, InfeasiblePlacementError  # noqa: E402
from cluster.hosts import SimHost, create_network, destroy_network, namespaces_available  # noqa: E402
from cluster.net import free_port  # noqa: E402
from cluster.nodes import cluster_down, load_state  # noqa: E402
from cluster.ray_start import is_ray_start_running, ray_start_command  # noqa: E402
from cluster.planner import live_nodes  # noqa: E402
from cluster.watchdog import watch_for_infeasible  # noqa: E402
from cluster.status import NodeStatus, cluster_status, format_status, node_statuses  # noqa: E402
from cluster.simulate import (  # noqa: E402
    SimulatedCluster,
    parse_simulate_spec,
    simulate_up,
    simulated_cluster,
)
from serve_apps.ingress import served_model  # noqa: E402
from shared import fetch_from  # noqa: E402

# -- pure parts ----------------------------------------------------------------------------------------------


def test_parse_simulate_spec() -> None:
    assert parse_simulate_spec("2:8") == (2, 8)
    for bad in ("2", "x:8", "0:4", "2:-1"):
        with pytest.raises(ConfigError, match="NODES:NPUS"):
            parse_simulate_spec(bad)


def test_ray_start_command_declares_npus_and_blocks() -> None:
    cmd = ray_start_command(
        head=False, address="10.0.0.1:6379", node_ip="10.0.0.2", num_cpus=8, resources={"NPU": 8.0}
    )
    assert cmd[:4] == [sys.executable, "-m", "ray.scripts.scripts", "start"]
    assert "--block" in cmd and cmd[cmd.index("--address") + 1] == "10.0.0.1:6379"
    assert json.loads(cmd[cmd.index("--resources") + 1]) == {"NPU": 8.0}
    with pytest.raises(ConfigError):
        ray_start_command(head=False)


def test_npus_auto_counts_davinci_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nodes_mod.shutil, "which", lambda name: None)
    devices = ["/dev/davinci0", "/dev/davinci1", "/dev/davinci_manager"]
    monkeypatch.setattr(nodes_mod.glob, "glob", lambda pattern: devices)
    assert nodes_mod.count_npus() == 2
    assert nodes_mod.node_resources("auto", "Ascend910B") == {"NPU": 2.0, "accelerator_type:Ascend910B": 1.0}
    monkeypatch.setattr(nodes_mod.glob, "glob", lambda pattern: [])
    with pytest.raises(ConfigError, match="found no NPU"):
        nodes_mod.node_resources("auto", None)


def test_status_maps_engine_supervisors_to_nodes() -> None:
    ray_nodes = [
        {
            "NodeID": "h",
            "Alive": True,
            "NodeManagerAddress": "127.0.0.2",
            "Resources": {"CPU": 1.0, "node:__internal_head__": 1.0},
        },
        {
            "NodeID": "w",
            "Alive": True,
            "NodeManagerAddress": "127.0.0.3",
            "Resources": {"CPU": 2.0, "NPU": 4.0},
        },
    ]
    actors = [
        {
            "class_name": "ServeReplica:engine:step_400:EngineSupervisor",
            "name": "",
            "state": "ALIVE",
            "node_id": "w",
        },
        {
            "class_name": "ServeReplica:engine:step_400:EngineSupervisor",
            "name": "",
            "state": "ALIVE",
            "node_id": "w",
        },
        {
            "class_name": "ServeReplica:evalcluster:OpenAIIngress",
            "name": "",
            "state": "ALIVE",
            "node_id": "h",
        },
    ]
    statuses = node_statuses(ray_nodes, {"h": {"CPU": 1.0}, "w": {"CPU": 0.0}}, actors, served_model)
    assert [s.models for s in statuses] == [{}, {"step_400": 2}]
    table = format_status(statuses)
    assert "step_400 x2" in table and "0/4" in table and "total (2 nodes)" in table
    assert isinstance(statuses[1], NodeStatus) and statuses[1].available["NPU"] == 0


# -- `cluster up --simulate` as separate `ray start` processes -----------------------------------------------


def test_simulate_up_job_submit_and_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVALCLUSTER_HOME", str(tmp_path / "home"))
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "job.py").write_text(
        "import os, ray\n"
        "ray.init()\n"
        "@ray.remote(resources={'NPU': 4}, num_cpus=0)\n"
        "class Holder:\n"  # actors keep their NPUs, so the second one must go to the other node
        "    def where(self):\n"
        "        return ray.util.get_node_ip_address(), os.environ['ASCEND_RT_VISIBLE_DEVICES']\n"
        "holders = [Holder.remote() for _ in range(2)]\n"
        "print('RESULT', sorted(ray.get([h.where.remote() for h in holders])))\n"
    )
    state = simulate_up("2:4", cpus_per_node=1, head_cpus=1)
    workers = [n.node_ip for n in state.nodes if n.role == "worker"]
    try:
        assert [n.role for n in state.nodes] == ["head", "worker", "worker", "driver"]
        assert load_state() == state
        if state.network:  # hosts of their own: one namespace per node but this machine's
            assert len({n.netns for n in state.nodes if n.role != "driver"}) == 3
            assert [n.netns for n in state.nodes if n.role == "driver"] == [None]
        monkeypatch.delenv("EVALCLUSTER_NODE_IP_ADDRESS", raising=False)
        statuses = cluster_status()  # reads the recorded cluster's GCS, no driver
        # ... taking only the cluster's auth settings: a node address left in this process's environment was
        # inherited by the next cluster's nodes, and every job driver there attached to this machine's node.
        assert "EVALCLUSTER_NODE_IP_ADDRESS" not in os.environ
        assert sorted(s.address for s in statuses) == sorted(n.node_ip for n in state.nodes)
        assert sum(s.total.get("NPU", 0) for s in statuses) == 8
        env = dict(os.environ, **state.client_env())
        ray_cli = [sys.executable, "-m", "ray.scripts.scripts", "job"]
        job_id = f"sim-test-{os.getpid()}"
        job = subprocess.run(
            [
                *ray_cli,
                "submit",
                "--address",
                state.dashboard_url,
                "--submission-id",
                job_id,
                "--working-dir",
                str(job_dir),
                "--",
                sys.executable,
                "job.py",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert job.returncode == 0 and "succeeded" in job.stdout, job.stdout[-2000:] + job.stderr[-2000:]
        # The tail `submit` prints can miss lines; the stored job log is complete.
        logs = subprocess.run(
            [*ray_cli, "logs", "--address", state.dashboard_url, job_id],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        # Two tp-4 actors: one per 4-NPU worker, each seeing all four of that node's NPUs.
        expected = sorted((ip, "0,1,2,3") for ip in workers)
        assert f"RESULT {expected}" in logs, logs[-2000:]
    finally:
        stopped = cluster_down()
    assert sorted(stopped) == sorted(n.pid for n in state.nodes)
    assert not any(is_ray_start_running(n.pid) for n in state.nodes)
    assert load_state() is None
    assert not [n.netns for n in state.nodes if n.netns and n.netns in namespaces()]


def namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


# -- separate hosts: network namespaces ----------------------------------------------------------------------

needs_namespaces = pytest.mark.skipif(not namespaces_available(), reason="network namespaces need root")


def serve_once(host: SimHost, bind: str) -> subprocess.Popen:
    """An HTTP server on `host`, bound to `bind`, answering 200 (started and ready)."""
    proc = subprocess.Popen(host.command([sys.executable, "-m", "http.server", "0", "--bind", bind]),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()  # "Serving HTTP on ADDR port PORT ..."
    assert "port" in line, line
    proc.port = int(line.split(" port ")[1].split()[0])  # type: ignore[attr-defined]
    return proc


@needs_namespaces
def test_hosts_have_their_own_loopback_and_reach_each_other_by_address() -> None:
    net = create_network(3)
    head, a, b = net.hosts
    servers = []
    try:
        on_a_loopback = serve_once(a, "127.0.0.1")
        on_a_address = serve_once(a, a.ip)
        servers = [on_a_loopback, on_a_address]
        assert fetch_from(a, f"http://127.0.0.1:{on_a_loopback.port}/") == "ok"
        # Another host's (and this machine's) 127.0.0.1 is its own: refused, as between real machines.
        assert fetch_from(b, f"http://127.0.0.1:{on_a_loopback.port}/") == "ConnectionRefusedError"
        assert fetch_from(None, f"http://127.0.0.1:{on_a_loopback.port}/") == "ConnectionRefusedError"
        for where in (b, head, None):
            assert fetch_from(where, f"http://{a.ip}:{on_a_address.port}/") == "ok"
        assert set(a.pids()) == {p.pid for p in servers}
        assert sorted(a.kill()) == sorted(p.pid for p in servers)
        for p in servers:
            assert p.wait(timeout=10) == -9
    finally:
        for p in servers:
            p.kill()
        destroy_network(net)
    assert not [h.netns for h in net.hosts if h.netns in namespaces()]


@needs_namespaces
def test_hosts_left_by_a_crashed_run_are_removed_at_the_next_start(tmp_path: Path) -> None:
    # A process that builds hosts, starts a sleeper on one and dies without cleaning up.
    crashed = subprocess.run([sys.executable, "-c", (
        "import os, subprocess, sys\n"
        "from cluster.hosts import create_network\n"
        "net = create_network(2)\n"
        "p = subprocess.Popen(net.hosts[1].command(['sleep', '600']), start_new_session=True,\n"
        "                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        # ... and one on this machine's side of the network (as its Ray node is), outside every namespace.
        "m = subprocess.Popen(['sleep', '600'], start_new_session=True, stdout=subprocess.DEVNULL,\n"
        "                     stderr=subprocess.DEVNULL)\n"
        "net.adopt(m.pid)\n"
        "print(net.hosts[1].netns, p.pid, m.pid, flush=True)\n"
        "os._exit(1)\n")], capture_output=True, text=True, timeout=60)
    netns, *pids = crashed.stdout.split()
    assert netns in namespaces() and all(is_alive(int(pid)) for pid in pids)
    net = create_network(1)  # the next start cleans up
    try:
        assert netns not in namespaces()
        deadline = time.monotonic() + 10
        while any(is_alive(int(pid)) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(is_alive(int(pid)) for pid in pids)
    finally:
        destroy_network(net)


def is_alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# -- an in-process simulated cluster (one per module) --------------------------------------------------------


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatedCluster]:
    with simulated_cluster(nodes=2, npus_per_node=4, cpus_per_node=2, head_cpus=1) as cluster:
        yield cluster


@ray.remote(num_cpus=0)
class NpuProbe:
    """Stands in for an engine supervisor: holds NPUs and reports what it (and a child process) sees."""

    def where(self) -> tuple[str, str | None]:
        return ray.util.get_node_ip_address(), os.environ.get("ASCEND_RT_VISIBLE_DEVICES")

    def child_sees(self) -> dict[str, str | None]:
        """Start the sim engine as a child, like the supervisor does, and read its /sim/stats."""
        port = free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sim_engine",
                "--port",
                str(port),
                "--served-model-name",
                "probe",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/sim/stats", timeout=2) as response:
                        return json.load(response)["visible_devices"]
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@ray.remote(num_cpus=0)
def stats_on(info: dict) -> dict:
    """An engine's /sim/stats, asked on its own host (with its key, from its node's key file)."""
    from serve_apps.engine_process import engine_headers

    request = urllib.request.Request(info["url"] + "/sim/stats", headers=engine_headers(info))
    return json.load(urllib.request.urlopen(request, timeout=10))


def test_node_capacities_read_back(sim: SimulatedCluster) -> None:
    nodes = live_nodes()
    workers = sorted((n for n in nodes if not n.is_head), key=lambda n: n.address)
    head = [n for n in nodes if n.is_head]
    npu_workers = [n for n in workers if n.total.get("NPU")]
    assert sorted(n.address for n in npu_workers) == sorted(sim.worker_ips)
    assert all(n.total["NPU"] == 4 and n.total["CPU"] == 2 for n in npu_workers)
    assert len(head) == 1 and head[0].address == sim.head_ip and "NPU" not in head[0].total
    status = cluster_status()
    assert sum(s.total.get("NPU", 0) for s in status) == 8
    assert sim.worker_ips[0] in format_status(status)


def test_npu_actor_sees_exactly_its_devices_and_so_does_its_child(sim: SimulatedCluster) -> None:
    probe = NpuProbe.options(resources={"NPU": 2}).remote()  # type: ignore[attr-defined]
    try:
        ip, visible = ray.get(probe.where.remote(), timeout=120)
        assert ip in sim.worker_ips
        assert visible is not None and len(visible.split(",")) == 2
        child = ray.get(probe.child_sees.remote(), timeout=120)
        assert child["ASCEND_RT_VISIBLE_DEVICES"] == visible
    finally:
        ray.kill(probe)


def test_tp4_replicas_land_on_different_nodes_and_tp2_times_4_fill_both(sim: SimulatedCluster) -> None:
    big = [NpuProbe.options(resources={"NPU": 4}).remote() for _ in range(2)]  # type: ignore[attr-defined]
    try:
        placed = ray.get([p.where.remote() for p in big], timeout=120)
        assert sorted(ip for ip, _ in placed) == sorted(sim.worker_ips)
        assert all(sorted(devices.split(",")) == ["0", "1", "2", "3"] for _, devices in placed)
    finally:
        for p in big:
            ray.kill(p)
    small = [NpuProbe.options(resources={"NPU": 2}).remote() for _ in range(4)]  # type: ignore[attr-defined]
    try:
        placed = ray.get([p.where.remote() for p in small], timeout=120)
        per_node = sorted(ip for ip, _ in placed)
        assert per_node == sorted(sim.worker_ips * 2)
    finally:
        for p in small:
            ray.kill(p)


def test_watchdog_fails_an_unplaceable_actor_within_10_s(sim: SimulatedCluster) -> None:
    too_big = NpuProbe.options(resources={"NPU": 8}, name="too_big").remote()  # type: ignore[attr-defined]
    try:
        start = time.monotonic()
        with pytest.raises(InfeasiblePlacementError) as info:
            watch_for_infeasible(timeout_s=10)
        assert time.monotonic() - start < 10
        assert str(info.value) == "actor too_big needs 8 NPU on one node; largest node has 4"
    finally:
        ray.kill(too_big)


def test_watchdog_is_quiet_when_everything_fits(sim: SimulatedCluster) -> None:
    probe = NpuProbe.options(resources={"NPU": 1}).remote()  # type: ignore[attr-defined]
    try:
        ray.get(probe.where.remote(), timeout=120)
        watch_for_infeasible(timeout_s=5, until=lambda: True)  # returns at once: nothing pending
    finally:
        ray.kill(probe)


def test_engine_supervisors_hold_their_npus_across_nodes(sim: SimulatedCluster) -> None:
    """The real serving path on NPU nodes, with the simulator in place of vllm-mindspore: tp-2 × 4 replicas fill
    both 4-NPU nodes, and each engine child sees exactly the two NPUs its replica holds."""
    from ray import serve

    from serve_apps.config import EngineConfig, ModelConfig, ServeConfig
    from serve_apps.endpoint import Endpoint

    engine = EngineConfig(kind="sim", platform="ascend", cpus_per_replica=0, startup_timeout_s=120)
    model = ModelConfig(model="/ckpt/step_100", tensor_parallel_size=2, num_replicas=4)
    endpoint = Endpoint(ServeConfig(port=0, engine=engine, models=[model])).start()
    try:
        engines: dict[int, dict] = {}
        deadline = time.monotonic() + 60
        while len(engines) < 4 and time.monotonic() < deadline:  # the handle picks a replica at random
            info = endpoint.engine_info("step_100")
            engines[info["pid"]] = info
        assert len(engines) == 4
        # Each engine listens on its own host's loopback: read it from there.
        seen = ray.get([stats_on.options(scheduling_strategy=NodeAffinitySchedulingStrategy(  # type: ignore
            info["node_id"], soft=False)).remote(info) for info in engines.values()])
        devices = [s["visible_devices"]["ASCEND_RT_VISIBLE_DEVICES"] for s in seen]
        assert all(len(d.split(",")) == 2 for d in devices)
        assert all(s["engine_env"]["VLLM_MS_MODEL_BACKEND"] == "Native" for s in seen)
        per_node = {s.address: s.models.get("step_100", 0) for s in cluster_status(model_of=served_model)
                    if s.total.get("NPU")}
        assert per_node == {ip: 2 for ip in sim.worker_ips}
        assert all(s.available.get("NPU", 0) == 0 for s in live_nodes() if not s.is_head)
    finally:
        serve.shutdown()
