"""Evaluations and sweeps on a cluster of separate hosts: a CPU head and two 4-NPU workers, each in its own network
namespace (its own 127.0.0.1), with simulated-latency engines standing in for vllm-mindspore.

Drivers run as their own processes, as users run them: `python -m eval_jobs.run` from this machine (a host of the
cluster with a CPU-less Ray node) and `ray job submit` to the head's dashboard, whose driver then runs on the head.
Client actors land on every host; each must reach replicas on the others (on one shared loopback, a client posting
to the head's 127.0.0.1 from another node only seems to work).
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from cluster.hosts import namespaces_available
from cluster.paths import REPO_ROOT
from cluster.net import free_port
from cluster.simulate import SimulatedCluster, start_simulated
from eval_jobs.store import SampleStore
from shared import fetch_from

pytestmark = pytest.mark.skipif(not namespaces_available(), reason="separate hosts need network namespaces (root)")

DEMO = "demo_arith_gen_0_shot_chat_prompt"
ROWS = 40


@pytest.fixture(scope="module")
def hosts() -> Iterator[SimulatedCluster]:
    with start_simulated(2, 4, cpus_per_node=2, head_cpus=1) as sim:
        yield sim


def sim_engine(**sim) -> dict:
    return {"kind": "sim", "platform": "ascend", "cpus_per_replica": 0, "startup_timeout_s": 120,
            "sim": {"ttft_s": 0.05, "tpot_s": 0.01, **sim}}


def eval_section(data_dir: Path, output: Path, **fields) -> dict:
    return {"datasets": [DEMO], "data_dir": str(data_dir), "limit": ROWS, "clients": 4, "concurrency": 4,
            "generation": {"max_out_len": 16}, "timeout_s": 60, "output": str(output), **fields}


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def run_here(sim: SimulatedCluster, module: str, config: Path, timeout_s: float = 400) -> subprocess.CompletedProcess:
    """`python -m MODULE CONFIG` on this machine, joined to the cluster as its config says."""
    env = dict(os.environ, **sim.state.client_env())
    env.pop("RAY_ADDRESS")  # the config names the cluster
    return subprocess.run([sys.executable, "-m", module, str(config)], env=env, capture_output=True, text=True,
                          timeout=timeout_s)


def submit(sim: SimulatedCluster, module: str, config: Path, timeout_s: float = 400) -> subprocess.CompletedProcess:
    """`ray job submit --working-dir REPO -- python -m MODULE CONFIG` to the head's dashboard: the driver runs on
    the head, from the uploaded copy of the repository. A job still running at the deadline is stopped, and the
    failure shows what its driver printed (the submit command's own output ends at "Tailing logs")."""
    from ray.job_submission import JobSubmissionClient

    env = dict(os.environ, **sim.state.client_env())
    job_id = f"test-{module}-{time.monotonic_ns()}"
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--address", sim.dashboard_url,
           "--submission-id", job_id, "--working-dir", str(REPO_ROOT), "--", sys.executable, "-m", module,
           str(config)]
    try:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        jobs = JobSubmissionClient(sim.dashboard_url)
        status, logs = jobs.get_job_status(job_id), jobs.get_job_logs(job_id)
        jobs.stop_job(job_id)
        raise AssertionError(f"job {job_id} still {status} after {timeout_s:.0f} s; its driver printed:\n"
                             f"{logs[-6000:]}") from None


def output_of(result: subprocess.CompletedProcess) -> str:
    return (result.stdout[-3000:] + "\n" + result.stderr[-5000:]).strip()


def client_hosts(sim: SimulatedCluster) -> dict[str, list[str]]:
    """Client actor name → address of the host it ran on, from Ray's state API (dead actors included)."""
    from ray.util.state import list_actors, list_nodes

    ips = {n.node_id: n.node_ip for n in list_nodes(address=sim.dashboard_url)}
    actors = list_actors(address=sim.dashboard_url, filters=[("class_name", "=", "EvalClient")], detail=True,
                         limit=10_000, raise_on_missing_output=False)
    hosts: dict[str, list[str]] = collections.defaultdict(list)
    for a in actors:
        hosts[a.name].append(ips.get(a.node_id, "?"))
    return hosts


def assert_every_sample_once_and_ok(output: Path, models: list[str], rows: int = ROWS) -> None:
    lines = (output / "samples.jsonl").read_text().splitlines()
    records = SampleStore(output / "samples.jsonl").load()
    keys = sorted((r.model, r.index) for r in records)
    assert keys == sorted((m, i) for m in models for i in range(rows))
    assert len(lines) == len(records), "a sample was stored twice"
    failed = [(r.model, r.index, r.error) for r in records if r.status != "ok"]
    assert not failed, failed[:5]


def test_eval_from_this_machine_reaches_replicas_on_both_hosts(hosts, data_dir, tmp_path):
    before = set(client_hosts(hosts))
    config = write_config(tmp_path / "job.yaml", {
        "cluster": hosts.cluster_section(),
        # tp 4 on 4-NPU hosts: one replica on each worker host.
        "serve": {"port": 0, "engine": sim_engine(),
                  "models": [{"model": "/ckpt/step_1", "served_model_name": "step_1", "tensor_parallel_size": 4,
                              "num_replicas": 2}]},
        "eval": eval_section(data_dir, tmp_path / "run"),
    })
    result = run_here(hosts, "eval_jobs.run", config)
    assert result.returncode == 0, output_of(result)
    assert_every_sample_once_and_ok(tmp_path / "run", ["step_1"])
    records = SampleStore(tmp_path / "run" / "samples.jsonl").load()
    assert {r.endpoint for r in records} == {"serve:engine:step_1"}  # the data plane, not the head's loopback
    ran_on = {ip for name, ips in client_hosts(hosts).items() if name not in before for ip in ips}
    # SPREAD over head, workers and this machine: clients on hosts other than the replicas' and the driver's.
    assert len(ran_on) >= 2 and ran_on & set(hosts.worker_ips), ran_on


def test_eval_and_sweep_as_ray_jobs_on_two_hosts(hosts, data_dir, tmp_path):
    eval_config = write_config(tmp_path / "job.yaml", {
        "cluster": {},  # under `ray job submit`: the job's cluster
        "serve": {"port": 0, "engine": sim_engine(),
                  "models": [{"model": f"/ckpt/{n}", "served_model_name": n, "tensor_parallel_size": 2}
                             for n in ("a", "b")]},
        "eval": eval_section(data_dir, tmp_path / "eval"),
    })
    result = submit(hosts, "eval_jobs.run", eval_config)
    assert result.returncode == 0 and "succeeded" in result.stdout, output_of(result)
    assert_every_sample_once_and_ok(tmp_path / "eval", ["a", "b"])

    ckpts = tmp_path / "ckpts"
    for step in (100, 200, 300):
        (ckpts / f"step_{step}").mkdir(parents=True)
        (ckpts / f"step_{step}" / "config.json").write_text('{"model_type": "qwen2"}')
        (ckpts / f"step_{step}" / "model.safetensors").write_bytes(b"\0" * 64)
    sweep_config = write_config(tmp_path / "sweep.yaml", {
        "cluster": {},
        "serve": {"port": 0, "engine": sim_engine()},
        "eval": eval_section(data_dir, tmp_path / "sweep", limit=10),
        # tp 4: one checkpoint per host at a time, three checkpoints over two hosts.
        "sweep": {"serving": {"tensor_parallel_size": 4}, "checkpoints": [{"glob": str(ckpts / "step_*")}]},
    })
    result = submit(hosts, "eval_jobs.sweep", sweep_config)
    assert result.returncode == 0 and "succeeded" in result.stdout, output_of(result)
    assert_every_sample_once_and_ok(tmp_path / "sweep", ["step_100", "step_200", "step_300"], rows=10)


# -- a host dies -----------------------------------------------------------------------------------------------


def start_here(sim: SimulatedCluster, module: str, config: Path) -> subprocess.Popen:
    env = dict(os.environ, **sim.state.client_env())
    env.pop("RAY_ADDRESS")
    log = open(config.with_suffix(f".{time.monotonic_ns()}.log"), "w")
    return subprocess.Popen([sys.executable, "-m", module, str(config)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def logs_of(config: Path) -> str:
    return "\n".join(p.read_text()[-4000:] for p in sorted(config.parent.glob(config.stem + ".*.log")))


def stored(output: Path) -> int:
    path = output / "samples.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def replica_hosts(sim: SimulatedCluster, model: str) -> list[str]:
    """Addresses of the hosts running `model`'s engine replicas now."""
    from ray.util.state import list_actors, list_nodes

    ips = {n.node_id: n.node_ip for n in list_nodes(address=sim.dashboard_url)}
    actors = list_actors(address=sim.dashboard_url, detail=True, limit=10_000, raise_on_missing_output=False,
                         filters=[("class_name", "=", f"ServeReplica:engine:{model}:EngineSupervisor"),
                                  ("state", "=", "ALIVE")])
    return sorted(ips[a.node_id] for a in actors)


def kill_when(sim: SimulatedCluster, driver: subprocess.Popen, config: Path, output: Path, after: int,
              host: Callable[[], str | None]) -> str:
    """Once `after` samples are stored, SIGKILL every process of the host `host()` names; returns its address."""
    deadline = time.monotonic() + 240
    while stored(output) < after or (ip := host()) is None:
        assert driver.poll() is None, logs_of(config)
        assert time.monotonic() < deadline, logs_of(config)
        time.sleep(0.2)
    assert sim.kill_host(ip)
    return ip


@pytest.fixture
def three_hosts() -> Iterator[SimulatedCluster]:
    with start_simulated(3, 2, cpus_per_node=2, head_cpus=1) as sim:
        yield sim


def slow_eval(data_dir: Path, output: Path, rows: int) -> dict:
    # 64 tokens at 50 ms: every request takes ~3 s, so the kill lands while many are in flight.
    return eval_section(data_dir, output, limit=rows, generation={"max_out_len": 64})


def test_host_killed_mid_eval_its_replica_moves_and_nothing_is_lost(three_hosts, data_dir, tmp_path):
    sim, rows = three_hosts, 48  # of the demo dataset's 50
    # Two tp-2 replicas on three 2-NPU hosts: one host is free to take the replica of a host that dies.
    config = write_config(tmp_path / "job.yaml", {
        "cluster": sim.cluster_section(),
        "serve": {"port": 0, "engine": sim_engine(tpot_s=0.05),
                  "models": [{"model": "/ckpt/m", "served_model_name": "m", "tensor_parallel_size": 2,
                              "num_replicas": 2}]},
        "eval": slow_eval(data_dir, tmp_path / "run", rows),
    })
    driver = start_here(sim, "eval_jobs.run", config)
    killed = kill_when(sim, driver, config, tmp_path / "run", 15,
                       lambda: next(iter(replica_hosts(sim, "m")), None))
    assert driver.wait(timeout=400) == 0, logs_of(config)
    assert_every_sample_once_and_ok(tmp_path / "run", ["m"], rows)
    assert killed not in replica_hosts(sim, "m") or not replica_hosts(sim, "m")  # retired at the end


def test_host_killed_with_no_room_left_fails_naming_it_and_a_rerun_resumes(data_dir, tmp_path):
    sim, rows = start_simulated(2, 2, cpus_per_node=2, head_cpus=1), 40
    try:
        # Two checkpoints fill both 2-NPU hosts: the one whose host dies has nowhere to go.
        config = write_config(tmp_path / "job.yaml", {
            "cluster": sim.cluster_section(),
            "serve": {"port": 0, "engine": sim_engine(tpot_s=0.05),
                      "models": [{"model": f"/ckpt/{n}", "served_model_name": n, "tensor_parallel_size": 2}
                                 for n in ("a", "b")]},
            "eval": slow_eval(data_dir, tmp_path / "run", rows),
        })
        driver = start_here(sim, "eval_jobs.run", config)
        killed = kill_when(sim, driver, config, tmp_path / "run", 10,
                           lambda: next(iter(replica_hosts(sim, "b")), None))
        assert driver.wait(timeout=300) == 2, logs_of(config)
        message = logs_of(config)
        assert f"error: host {killed} was lost; checkpoint 'b' has no replica left" in message, message
        assert "no remaining host has 2 NPU free" in message, message
        assert (tmp_path / "run" / "summary.csv").exists()  # the partial report
        first = SampleStore(tmp_path / "run" / "samples.jsonl").load()
        assert 10 <= len(first) < 2 * rows

        sim.restart_host(killed)  # the host comes back; the same command resumes
        result = run_here(sim, "eval_jobs.run", config)
        assert result.returncode == 0, output_of(result)
        assert_every_sample_once_and_ok(tmp_path / "run", ["a", "b"], rows)
        assert {r.key for r in first if r.status == "ok"} <= {r.key for r in SampleStore(
            tmp_path / "run" / "samples.jsonl").load()[: len(first)]}  # kept, not sent again
    finally:
        sim.stop()


def test_host_killed_mid_sweep_its_checkpoint_is_deployed_again_elsewhere(three_hosts, data_dir, tmp_path):
    sim, rows = three_hosts, 12
    ckpts = tmp_path / "ckpts"
    for step in (100, 200, 300, 400):
        (ckpts / f"step_{step}").mkdir(parents=True)
        (ckpts / f"step_{step}" / "config.json").write_text('{"model_type": "qwen2"}')
        (ckpts / f"step_{step}" / "model.safetensors").write_bytes(b"\0" * 64)
    config = write_config(tmp_path / "sweep.yaml", {
        "cluster": sim.cluster_section(),
        "serve": {"port": 0, "engine": sim_engine(tpot_s=0.05)},
        "eval": slow_eval(data_dir, tmp_path / "sweep", rows),
        "sweep": {"serving": {"tensor_parallel_size": 2}, "checkpoints": [{"glob": str(ckpts / "step_*")}]},
    })
    driver = start_here(sim, "eval_jobs.sweep", config)

    def busy_host() -> str | None:
        held = [ip for n in ("step_100", "step_200", "step_300", "step_400") for ip in replica_hosts(sim, n)]
        return held[0] if held else None

    killed = kill_when(sim, driver, config, tmp_path / "sweep", 4, busy_host)
    assert driver.wait(timeout=400) == 0, logs_of(config)
    assert_every_sample_once_and_ok(tmp_path / "sweep", [f"step_{s}" for s in (100, 200, 300, 400)], rows)
    lost = [json.loads(line) for line in (tmp_path / "sweep" / "events.jsonl").read_text().splitlines()
            if '"host-lost"' in line]
    assert lost and all(killed in e["hosts"] for e in lost), lost


def test_endpoint_on_every_host_with_proxy_location_every_node(hosts, tmp_path):
    """Where a person reaches the shared endpoint: with EveryNode, the head and every host that runs a replica
    serve it on their own 127.0.0.1 (Ray Serve starts proxies on the nodes that have replicas, and the head)."""
    # A running Serve keeps the HTTP settings it was started with (the earlier tests' is HeadOnly): start afresh,
    # as a person would, with Ray's own `serve shutdown`.
    shutdown = subprocess.run([sys.executable, "-m", "ray.serve.scripts", "shutdown", "-a", hosts.dashboard_url, "-y"],
                              env=dict(os.environ, **hosts.state.client_env()), capture_output=True, text=True,
                              timeout=120)
    assert shutdown.returncode == 0, shutdown.stderr[-2000:]
    port = free_port()  # free on this machine; every other host has a network stack of its own
    config = write_config(tmp_path / "serve.yaml", {
        "cluster": hosts.cluster_section(),
        "serve": {"port": port, "proxy_location": "EveryNode", "engine": sim_engine(),
                  "models": [{"model": "/ckpt/everywhere", "served_model_name": "everywhere"}]},
    })
    env = dict(os.environ, **hosts.state.client_env())
    env.pop("RAY_ADDRESS")
    cli = str(Path(sys.executable).parent / "evalcluster")
    server = subprocess.Popen([cli, "serve", "--config", str(config)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        seen = []
        for line in server.stdout:
            seen.append(line)
            if "Ctrl-C to stop" in line:
                break
        assert server.poll() is None, "".join(seen[-40:])
        url = f"http://127.0.0.1:{port}/v1/models"
        on = [hosts.host(ip) for ip in sorted({hosts.head_ip, *replica_hosts(hosts, "everywhere")})]
        assert len(on) >= 2
        deadline = time.monotonic() + 60  # each proxy learns the routes on its own
        while (answers := [fetch_from(h, url) for h in on]) != ["ok"] * len(on) and time.monotonic() < deadline:
            time.sleep(1)
        assert answers == ["ok"] * len(on), answers
    finally:
        os.killpg(server.pid, signal.SIGINT)
        server.wait(timeout=120)
