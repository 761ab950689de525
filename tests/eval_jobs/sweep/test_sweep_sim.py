"""Sweeps on a simulated cluster (CPU head + one 4-NPU worker) with simulated-latency engines: packing within the
NPU budget, resume after the driver is SIGKILLed, and `--watch`. The driver runs as its own process
(`python -m eval_jobs.sweep`), as under `ray job submit`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cluster.nodes import ClusterState, cluster_down
from cluster.simulate import simulate_up
from eval_jobs.store import SampleStore
from eval_jobs.sweep.scheduler import peak_devices
from ms_export import export_ckpt

DEMO = "demo_arith_gen_0_shot_chat_prompt"
NPUS = 4
TP = 2
ROWS = 6  # samples per checkpoint


@pytest.fixture(scope="module")
def sim_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterState]:
    home = tmp_path_factory.mktemp("sweep-home")
    old = os.environ.get("EVALCLUSTER_HOME")
    os.environ["EVALCLUSTER_HOME"] = str(home)  # cluster state of this module's cluster only
    try:
        state = simulate_up(f"1:{NPUS}", cpus_per_node=2, head_cpus=2)
        try:
            yield state
        finally:
            cluster_down()
    finally:
        if old is None:
            os.environ.pop("EVALCLUSTER_HOME")
        else:
            os.environ["EVALCLUSTER_HOME"] = old


def fake_checkpoint(path: Path) -> Path:
    """An HF-shaped directory; the simulated engine never reads the weights."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    (path / "model.safetensors").write_bytes(b"\0" * 64)
    return path


def sweep_config(tmp_path: Path, state: ClusterState, data_dir: Path, sweep: dict) -> Path:
    config = {
        "cluster": {"address": state.gcs_address, "node_ip_address": state.driver_ip},
        "serve": {"port": 0, "engine": {"kind": "sim", "platform": "ascend", "cpus_per_replica": 0,
                                        "startup_timeout_s": 120, "sim": {"ttft_s": 0.05, "tpot_s": 0.05}}},
        "eval": {"datasets": [DEMO], "data_dir": str(data_dir), "limit": ROWS, "clients": 1, "concurrency": 2,
                 "generation": {"max_out_len": 16}, "timeout_s": 60, "output": str(tmp_path / "sweep")},
        "sweep": {"serving": {"tensor_parallel_size": TP}, **sweep},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_driver(config: Path, state: ClusterState, *args: str) -> subprocess.Popen:
    env = dict(os.environ, **state.client_env())
    env.pop("RAY_ADDRESS", None)  # the config names the cluster
    log = open(config.parent / f"driver-{time.monotonic_ns()}.log", "w")
    return subprocess.Popen([sys.executable, "-m", "eval_jobs.sweep", str(config), *args], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def driver_log(config: Path) -> str:
    return "\n".join(p.read_text()[-3000:] for p in sorted(config.parent.glob("driver-*.log")))


def events(sweep_dir: Path) -> list[dict]:
    path = sweep_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_sweep_packs_within_the_npus_and_resumes_after_sigkill(sim_cluster, data_dir, tiny_model, tmp_path):
    names = [f"step_{s}" for s in (100, 200, 300, 400)]
    for name in names[:3]:
        fake_checkpoint(tmp_path / "ckpts" / name)
    # The last one is a MindSpore .ckpt: converted by a Ray task on the cluster before it is deployed.
    export_ckpt(tiny_model, tmp_path / "ckpts" / "step_400.ckpt")
    config = sweep_config(tmp_path, sim_cluster, data_dir, {"checkpoints": [{"glob": str(tmp_path / "ckpts/step_*")}],
                                                           "base": str(tiny_model),
                                                           "convert_cache": str(tmp_path / "converted")})
    sweep_dir = tmp_path / "sweep"

    first = start_driver(config, sim_cluster)
    deadline = time.monotonic() + 240
    while not any(e["event"] == "retired" for e in events(sweep_dir)):
        assert first.poll() is None, driver_log(config)
        assert time.monotonic() < deadline, driver_log(config)
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    before_kill = events(sweep_dir)
    stored = SampleStore(sweep_dir / "samples.jsonl").load()
    done_before = {n for n in names if sum(r.model == n for r in stored) == ROWS}
    assert {e["checkpoint"] for e in before_kill if e["event"] == "retired"} <= done_before

    second = start_driver(config, sim_cluster)
    assert second.wait(timeout=300) == 0, driver_log(config)
    after = events(sweep_dir)[len(before_kill):]

    # Within the budget: 4 NPUs hold two tp-2 checkpoints at once, never more, and the sweep used both slots.
    assert peak_devices(before_kill) == NPUS
    assert peak_devices(after) <= NPUS
    # Resume: what finished before the kill is not deployed again (a deployment the killed driver left is retired);
    # every checkpoint is evaluated exactly once.
    assert {e["checkpoint"] for e in after if e["event"] == "skipped"} == done_before
    assert not done_before & {e["checkpoint"] for e in after if e["event"] == "deploy"}
    records = SampleStore(sweep_dir / "samples.jsonl").load()
    keys = [(r.model, r.index) for r in records]
    assert sorted(set(keys)) == sorted((n, i) for n in names for i in range(ROWS))
    assert all(r.status == "ok" for r in records)
    lines = (sweep_dir / "samples.jsonl").read_text().splitlines()
    assert len(lines) == len(keys), "a finished sample was sent again"
    converted = [e for e in before_kill + after if e["event"] == "converted"]
    assert {e["checkpoint"] for e in converted} == {"step_400"}
    assert (Path(converted[-1]["model_dir"]) / "model.safetensors").exists()
    # Simulated engines: a performance report, no scores.
    summary = (sweep_dir / "summary.md").read_text()
    assert "SIMULATED ENGINE" in summary and all(n in summary for n in names)
    assert not (sweep_dir / "sweep.csv").exists()


def test_watch_picks_up_a_finished_checkpoint_and_not_one_being_written(sim_cluster, data_dir, tmp_path):
    watched = tmp_path / "train-out"
    watched.mkdir()
    config = sweep_config(tmp_path, sim_cluster, data_dir,
                          {"watch": str(watched), "settle_s": 2, "poll_s": 0.5, "idle_timeout_s": 6})
    sweep_dir = tmp_path / "sweep"
    driver = start_driver(config, sim_cluster)
    try:
        time.sleep(3)  # written after the sweep started
        fake_checkpoint(watched / "step_10")
        growing = fake_checkpoint(watched / "step_20")
        deadline = time.monotonic() + 180
        while not any(e["event"] == "retired" for e in events(sweep_dir)):
            assert driver.poll() is None, driver_log(config)
            assert time.monotonic() < deadline, driver_log(config)
            with (growing / "model.safetensors").open("ab") as f:  # the trainer is still writing step_20
                f.write(b"\0" * 64)
            last_write = time.time()
            time.sleep(0.5)
        seen = {(e["event"], e["checkpoint"]) for e in events(sweep_dir)}
        assert ("found", "step_10") in seen and ("retired", "step_10") in seen
        assert not any(name == "step_20" for _, name in seen)
        # Once the writing stops, step_20 settles and is evaluated too; then the sweep idles out and ends.
        assert driver.wait(timeout=180) == 0, driver_log(config)
        found_20 = next(e["t"] for e in events(sweep_dir) if e == {**e, "event": "found", "checkpoint": "step_20"})
        assert found_20 >= last_write + 2 - 0.5
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)


def test_a_checkpoint_rewritten_under_the_same_name_is_evaluated_again(sim_cluster, data_dir, tmp_path):
    """A checkpoint is its weights, not its directory name: an unchanged rerun skips it without deploying; after
    training rewrites step_100's weights in place, the rerun deploys it and sends every sample again."""
    ckpt = fake_checkpoint(tmp_path / "ckpts" / "step_100")
    config = sweep_config(tmp_path, sim_cluster, data_dir, {"checkpoints": [{"path": str(ckpt)}]})
    sweep_dir = tmp_path / "sweep"
    for run in range(3):
        if run == 2:
            (ckpt / "model.safetensors").write_bytes(b"\1" * 128)
        before = len(events(sweep_dir))
        assert start_driver(config, sim_cluster).wait(timeout=300) == 0, driver_log(config)
        kinds = [(e["event"], e.get("sent"), e.get("changed")) for e in events(sweep_dir)[before:]
                 if e["event"] in ("skipped", "resume")]
        assert kinds == [[("resume", ROWS, 0)], [("skipped", None, None)], [("resume", ROWS, ROWS)]][run], kinds
    records = SampleStore(sweep_dir / "samples.jsonl").load()
    assert len(records) == ROWS and all(r.status == "ok" for r in records)
    assert len((sweep_dir / "samples.jsonl").read_text().splitlines()) == 2 * ROWS  # each sample sent twice, no more
