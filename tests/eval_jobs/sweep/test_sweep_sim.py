"""Sweeps on a simulated cluster (CPU head + one 4-NPU worker) with simulated-latency engines: packing within the
NPU budget, resume after the driver is SIGKILLed, `--watch`, Ctrl-C, and `evalcluster serve` sharing the cluster's
Serve. The drivers run as their own processes (`python -m eval_jobs.sweep`, `evalcluster serve`), as under
`ray job submit`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cluster.hosts import HostNetwork
from cluster.nodes import ClusterState, cluster_down
from cluster.simulate import simulate_up
from eval_jobs.store import SampleStore
from eval_jobs.sweep.scheduler import peak_devices
from ms_export import export_ckpt
from shared import broken_config

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


def test_ctrl_c_stops_within_seconds_retires_everything_and_a_rerun_resumes(sim_cluster, data_dir, tmp_path):
    for s in (100, 200, 300, 400):
        fake_checkpoint(tmp_path / "ckpts" / f"step_{s}")
    sweep = {"checkpoints": [{"glob": str(tmp_path / "ckpts/step_*")}]}
    # Slow answers: 32 s a sample, three rounds per checkpoint. Waiting for the active checkpoints to finish (what
    # the thread pool used to do on exit) would take over a minute after the Ctrl-C.
    config = sweep_config(tmp_path, sim_cluster, data_dir, sweep)
    slow = yaml.safe_load(config.read_text())
    slow["serve"]["engine"]["sim"]["tpot_s"] = 0.5
    slow["eval"]["generation"]["max_out_len"] = 64
    config.write_text(yaml.safe_dump(slow))
    sweep_dir = tmp_path / "sweep"
    store = SampleStore(sweep_dir / "samples.jsonl")

    driver = start_driver(config, sim_cluster)
    deadline = time.monotonic() + 240
    while len(store.load()) < 2:  # the first answers are stored; more are in flight
        assert driver.poll() is None, driver_log(config)
        assert time.monotonic() < deadline, driver_log(config)
        time.sleep(0.5)
    os.killpg(driver.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    t0 = time.monotonic()
    assert driver.wait(timeout=45) == 130, driver_log(config)  # a bound, not a measurement: see the report
    exited = time.time()
    stopped = events(sweep_dir)
    stop = next(e["t"] for e in stopped if e["event"] == "stop")
    print(f"Ctrl-C → exit {time.monotonic() - t0:.1f} s; stop → last retired "
          f"{max(e['t'] for e in stopped if e['event'] == 'retired') - stop:.1f} s; stop → exit {exited - stop:.1f} s")
    deployed = [e["checkpoint"] for e in stopped if e["event"] == "deploy"]
    assert deployed and sorted(deployed) == sorted(e["checkpoint"] for e in stopped if e["event"] == "retired")
    kept = store.load()
    assert len(kept) >= 2 and all(r.status == "ok" for r in kept)

    # The rerun (fast answers now) finds nothing left deployed, keeps what was stored, sends only the rest.
    slow["serve"]["engine"]["sim"]["tpot_s"] = 0.01
    config.write_text(yaml.safe_dump(slow))
    rerun = start_driver(config, sim_cluster)
    assert rerun.wait(timeout=300) == 0, driver_log(config)
    after = events(sweep_dir)[len(stopped):]
    assert not [e for e in after if e.get("reason") == "left behind by a previous run"]
    records = store.load()
    assert sorted((r.model, r.index) for r in records) == sorted((f"step_{s}", i) for s in (100, 200, 300, 400)
                                                                 for i in range(ROWS))
    lines = (sweep_dir / "samples.jsonl").read_text().splitlines()
    assert len(lines) == len(records), "a sample was recorded twice: one in flight at the stop was kept"
    assert {r.key for r in kept} <= {r.key for r in records}


def serve_process(sim_cluster: ClusterState, tmp_path: Path, name: str, models: list[dict],
                  port: int = 0) -> subprocess.Popen:
    """`evalcluster serve` joined to the simulated cluster with simulated engines."""
    config = tmp_path / f"serve-{name}.yaml"
    config.write_text(yaml.safe_dump({
        "cluster": {"address": sim_cluster.gcs_address, "node_ip_address": sim_cluster.driver_ip},
        "serve": {"port": port, "engine": {"kind": "sim", "platform": "ascend", "cpus_per_replica": 0,
                                           "startup_timeout_s": 120}, "models": models},
    }))
    env = dict(os.environ, **sim_cluster.client_env())
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path / f"serve-{name}.log", "w")
    # `-m` rather than the console script: the script imports whichever tree was installed, not this one.
    return subprocess.Popen([sys.executable, "-m", "evalcluster_cli.main", "serve", "--config", str(config)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_line(process: subprocess.Popen, log: Path, text: str, timeout_s: float = 180) -> str:
    deadline = time.monotonic() + timeout_s
    while text not in (seen := log.read_text()):
        assert process.poll() is None, seen[-3000:]
        assert time.monotonic() < deadline, seen[-3000:]
        time.sleep(0.3)
    return seen


def listed(sim_cluster: ClusterState, url: str) -> list[str] | str:
    """The model ids the endpoint at `url` lists, asked from the head (where its loopback address is), or the
    error's name."""
    head = HostNetwork.from_dict(sim_cluster.network).host(sim_cluster.gcs_address.split(":")[0])
    code = ("import json, sys, urllib.request\ntry:\n"
            "    print(json.dumps([m['id'] for m in json.load(urllib.request.urlopen(sys.argv[1], timeout=5))['data']]))\n"
            "except Exception as e:\n    print(json.dumps(type(e).__name__))\n")
    out = subprocess.run(head.command([sys.executable, "-c", code, url]), capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout)


def settles_to(sim_cluster: ClusterState, url: str, expected: list[str] | str, timeout_s: float = 60) -> object:
    """What `url` lists once it equals `expected`, or at the deadline (the ingress refreshes its table on a timer)."""
    deadline = time.monotonic() + timeout_s
    while (now := listed(sim_cluster, url)) != expected and time.monotonic() < deadline:
        time.sleep(1)
    return now


def test_stopping_serve_removes_only_what_it_deployed(sim_cluster, tmp_path):
    first = serve_process(sim_cluster, tmp_path, "first", [{"model": "/ckpt/first", "served_model_name": "first"}])
    try:
        seen = wait_for_line(first, tmp_path / "serve-first.log", "Ctrl-C to stop")
        url = next(line.split()[1] for line in seen.splitlines() if line.startswith("endpoint:")) + "/models"
        # Another user of the same Serve (a sweep would be the same): it joins, deploys its own checkpoint.
        second = serve_process(sim_cluster, tmp_path, "second",
                               [{"model": "/ckpt/second", "served_model_name": "second"}])
        try:
            wait_for_line(second, tmp_path / "serve-second.log", "Ctrl-C to stop")
            assert settles_to(sim_cluster, url, ["first", "second"]) == ["first", "second"]
            os.killpg(first.pid, signal.SIGINT)
            assert first.wait(timeout=120) == 0
            assert settles_to(sim_cluster, url, ["second"]) == ["second"]  # the other one's checkpoint and the endpoint stay
            os.killpg(second.pid, signal.SIGINT)
            assert second.wait(timeout=120) == 0
            assert settles_to(sim_cluster, url, "HTTPError") == "HTTPError"  # the last one out removed the ingress
        finally:
            if second.poll() is None:
                os.killpg(second.pid, signal.SIGKILL)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)


def test_an_endpoint_stopped_part_way_through_its_start_retires_what_it_deployed(sim_cluster, tmp_path):
    # Someone else's endpoint on the same Serve (it also tells where Serve's proxy listens).
    other = serve_process(sim_cluster, tmp_path, "other", [{"model": "/ckpt/other", "served_model_name": "other"}])
    try:
        seen = wait_for_line(other, tmp_path / "serve-other.log", "Ctrl-C to stop")
        url = next(line.split()[1] for line in seen.splitlines() if line.startswith("endpoint:")) + "/models"
        # Each fits the 4 NPUs alone (so the up-front check passes), not together with the others: `blocked`
        # cannot start, so the start is stuck part-way, `fits` deployed, when it is interrupted.
        models = [{"model": "/ckpt/fits", "served_model_name": "fits", "tensor_parallel_size": 2},
                  {"model": "/ckpt/blocked", "served_model_name": "blocked", "tensor_parallel_size": 4}]
        server = serve_process(sim_cluster, tmp_path, "partial", models)
        log = tmp_path / "serve-partial.log"
        try:
            deadline = time.monotonic() + 180
            while listed(sim_cluster, url) != ["fits", "other"]:
                assert server.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(1)
            assert "Ctrl-C to stop" not in log.read_text()  # still starting: waiting for `blocked`
            os.killpg(server.pid, signal.SIGINT)
            assert server.wait(timeout=120) == 0, log.read_text()[-3000:]
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
        assert settles_to(sim_cluster, url, ["other"]) == ["other"]  # `fits` retired, `blocked` too; the other one untouched
    finally:
        os.killpg(other.pid, signal.SIGINT)
        other.wait(timeout=120)


@pytest.mark.engine
def test_a_sweep_scores_each_checkpoint_once_and_an_evaluator_failure_fails_only_its_dataset(
        sim_cluster, data_dir, tiny_model, tmp_path):
    """Real vLLM CPU engines (tiny-qwen2) on the simulated hosts, AISBench's evaluator; one dataset whose
    postprocessor raises (test_scores.broken_config)."""
    config = sweep_config(tmp_path, sim_cluster, data_dir, {
        "checkpoints": [{"path": str(tiny_model), "name": "tiny-a", "step": 1},
                        {"path": str(tiny_model), "name": "tiny-b", "step": 2}],
        "serving": {"dtype": "float32", "max_model_len": 512}, "max_concurrent": 1})
    job = yaml.safe_load(config.read_text())
    job["serve"]["engine"] = {"platform": "cpu", "cpus_per_replica": 1, "omp_num_threads": 1,
                              "startup_timeout_s": 600}
    job["eval"].update(datasets=[DEMO, str(broken_config(tmp_path))], limit=2, timeout_s=120)
    config.write_text(yaml.safe_dump(job))
    sweep_dir = tmp_path / "sweep"
    driver = start_driver(config, sim_cluster)
    try:
        assert driver.wait(timeout=900) == 1, driver_log(config)  # 1: a dataset could not be scored
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    log = events(sweep_dir)
    assert sorted(e["checkpoint"] for e in log if e["event"] == "scored") == ["tiny-a", "tiny-b"]  # once each
    assert sorted(e["checkpoint"] for e in log if e["event"] == "retired") == ["tiny-a", "tiny-b"]
    failed = [(e["checkpoint"], e["dataset"]) for e in log if e["event"] == "score-failed"]
    assert sorted(failed) == [("tiny-a", "demo_arith_broken"), ("tiny-b", "demo_arith_broken")]
    assert "tiny-b / demo_arith_broken: not scored:" in driver_log(config)
    # The other dataset is in the report for both checkpoints, as summarize's rows.
    curve = pd.read_csv(sweep_dir / "sweep.csv")
    assert sorted(zip(curve["checkpoint"], curve["dataset"])) == [("tiny-a", "demo_arith"), ("tiny-b", "demo_arith")]
    summary = pd.read_csv(sweep_dir / "summary.csv")
    assert set(summary.loc[summary["metric"] == "accuracy", "model"]) == {"tiny-a", "tiny-b"}
    # The learning curve in TensorBoard (the sweep's default logdir), read back with TensorBoard's own reader: each
    # checkpoint at its step with sweep.csv's value and CI, and its perf figures beside them.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logged = EventAccumulator(str(sweep_dir / "tensorboard")).Reload()
    for column, suffix in (("value", ""), ("ci_low", "_ci_low"), ("ci_high", "_ci_high")):
        scalars = {e.step: e.value for e in logged.Scalars(f"demo_arith/accuracy{suffix}")}
        assert scalars == pytest.approx(dict(zip(curve["step"], curve[column]))), column
    assert sorted(e.step for e in logged.Scalars("perf/demo_arith/ttft_p50_s")) == [1, 2]
    assert (sweep_dir / "samples.html").exists() and "tiny-b" in (sweep_dir / "samples.html").read_text()


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
