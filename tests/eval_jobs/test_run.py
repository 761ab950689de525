"""The evaluation job end to end: real Ray client actors, the real vLLM CPU engine behind the shared endpoint,
AISBench's evaluator, the durable store and the report."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cluster.errors import ConfigError
from eval_jobs.config import JobConfig, load_job_config
from eval_jobs.evaluation import exit_code, run_job
from eval_jobs.store import RunDir, SampleStore
from shared import API_KEY, engine_requests

DEMO = "demo_arith_gen_0_shot_chat_prompt"


def job(endpoint_url: str, data_dir: Path, output: Path, **eval_fields) -> JobConfig:
    fields = dict(endpoint=endpoint_url, api_key=API_KEY, models=["tiny-a"], datasets=[DEMO],
                  data_dir=str(data_dir), generation={"max_out_len": 8, "temperature": 0}, clients=2,
                  concurrency=2, timeout_s=60, output=str(output))
    return JobConfig(eval={**fields, **eval_fields})


def wait_engine_idle(endpoint, model: str = "tiny-a", quiet_s: float = 3.0) -> None:
    """Until the engine has run nothing for `quiet_s` (requests of a killed driver's clients have drained)."""
    last, since = engine_requests(endpoint, model), time.monotonic()
    while time.monotonic() - since < quiet_s:
        time.sleep(0.5)
        now = engine_requests(endpoint, model)
        if now != last:
            last, since = now, time.monotonic()


@pytest.mark.engine
def test_eval_job_scores_with_aisbench_and_writes_the_report(endpoint, data_dir, tmp_path, ray_cluster):
    cfg = job(endpoint.url, data_dir, tmp_path / "run", limit=6, num_repeats=2, k=[1, 2])
    before = engine_requests(endpoint)
    table = run_job(cfg)
    assert engine_requests(endpoint) - before == 12

    run = RunDir(tmp_path / "run")
    samples = pd.read_parquet(run.samples_parquet)
    assert len(samples) == 12 and not samples.duplicated(["model", "dataset", "index", "repeat"]).any()
    assert (samples["status"] == "ok").all() and samples["completion_tokens"].gt(0).all()
    assert samples["ttft_s"].notna().all() and samples["prompt"].map(len).gt(0).all()
    metrics = set(table.loc[table["model"] == "tiny-a", "metric"])
    assert {"accuracy", "pass@2", "cons@2"} <= metrics
    # AISBench's extraction ran on every answer (random weights: a boxed answer, if any, is luck).
    assert set(samples.columns) >= {"correct", "extracted"}
    for path in (run.summary_csv, run.summary_md, run.summary_html, run.config_yaml, run.versions_json):
        assert path.stat().st_size > 0
    assert API_KEY not in run.config_yaml.read_text()

    # The same config on the same run directory resumes: nothing left to send, every key still reported once.
    before = engine_requests(endpoint)
    run_job(cfg)
    assert engine_requests(endpoint) - before == 0
    assert len(pd.read_parquet(run.samples_parquet)) == 12


@pytest.mark.engine
def test_resume_after_the_driver_is_killed_sends_exactly_the_unfinished_samples(endpoint, data_dir, tmp_path):
    output = tmp_path / "run"
    config = tmp_path / "job.yaml"
    cfg = job(endpoint.url, data_dir, output, num_repeats=4, clients=2, concurrency=2)
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True) | {
        "eval": {**cfg.eval.model_dump(mode="json", exclude_none=True), "api_key": API_KEY}}))
    total = 50 * 4
    store = SampleStore(RunDir(output).samples_jsonl)
    command = [sys.executable, "-m", "eval_jobs.run", str(config)]

    # Its own session: killing the group takes down the driver and the embedded Ray it started, as a crash would.
    driver = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while len(store.load()) < 40 and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.2)
        assert driver.poll() is None, "the driver finished before it could be killed"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    wait_engine_idle(endpoint)
    finished = store.finished_keys()
    assert 40 <= len(finished) < total

    before = engine_requests(endpoint)
    subprocess.run(command, check=True, timeout=600, stdout=subprocess.DEVNULL)
    assert engine_requests(endpoint) - before == total - len(finished)
    samples = pd.read_parquet(RunDir(output).samples_parquet)
    assert len(samples) == total
    assert not samples.duplicated(["model", "dataset", "index", "repeat"]).any()


class SilentServer:
    """Accepts connections and never answers: the endpoint that hangs."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self):
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_server_that_never_answers_ends_in_bounded_time_with_failed_samples_and_a_report(
    ray_cluster, data_dir, tmp_path
):
    server = SilentServer()
    try:
        cfg = job(server.url, data_dir, tmp_path / "run", models=["m"], limit=3, first_token_timeout_s=1.0,
                  max_retries=1, backoff_s=0.1)
        started = time.monotonic()
        table = run_job(cfg)
        assert time.monotonic() - started < 60
    finally:
        server.close()
    samples = pd.read_parquet(RunDir(tmp_path / "run").samples_parquet)
    assert len(samples) == 3 and (samples["status"] == "failed").all()
    assert samples["error"].str.contains("no first token within 1 s").all() and (samples["attempts"] == 2).all()
    assert table["failures"].max() == 3
    assert exit_code(table) == 1  # a partial report is not a success


class GarbageServer:
    """Answers every chat request with 200 and a broken stream: alternately invalid JSON, and a stream cut off before
    `data: [DONE]`."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        calls = itertools.count()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                if next(calls) % 2:
                    self.wfile.write(b'data: {"choices": [{"index": 0, "delta": {"content": "4"}}]}\n\n')
                else:
                    self.wfile.write(b"data: {oops\n\n")
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_server_that_answers_garbage_fails_the_samples_with_the_reason_and_a_report(ray_cluster, data_dir, tmp_path):
    server = GarbageServer()
    try:
        table = run_job(job(server.url, data_dir, tmp_path / "run", models=["m"], limit=4, timeout_s=5.0,
                            max_retries=1, backoff_s=0.05))
    finally:
        server.close()
    samples = pd.read_parquet(RunDir(tmp_path / "run").samples_parquet)
    assert len(samples) == 4 and (samples["status"] == "failed").all() and (samples["attempts"] == 2).all()
    reasons = samples["error"].str.cat(sep=" | ")
    assert "invalid JSON in stream" in reasons and "without 'data: [DONE]'" in reasons, reasons
    assert RunDir(tmp_path / "run").summary_html.exists()
    assert exit_code(table) == 1


def test_bad_config_names_file_field_and_value(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"eval": {"endpoint": "http://127.0.0.1:1", "datasets": [DEMO],
                                             "concurrency": -3}}))
    with pytest.raises(ConfigError) as err:
        load_job_config(path)
    assert str(path) in str(err.value) and "eval.concurrency" in str(err.value) and "-3" in str(err.value)

    path.write_text(yaml.safe_dump({"eval": {"datasets": [DEMO]}}))
    with pytest.raises(ConfigError, match="eval.endpoint"):
        load_job_config(path)


def run_lines(output: Path) -> list[dict]:
    return [json.loads(line) for line in RunDir(output).runs_jsonl.read_text().splitlines()]


@pytest.mark.engine
def test_a_rerun_with_a_longer_max_out_len_resends_every_sample(endpoint, data_dir, tmp_path):
    """The issue's case: 10 samples at max_out_len 8, then the same output directory at 16. Before, nothing was sent
    and every answer kept 8 tokens; now every sample's fingerprint differs, all 10 are sent again, and the report
    holds only answers of the new config."""
    output = tmp_path / "run"
    short = job(endpoint.url, data_dir, output, limit=10)
    before = engine_requests(endpoint)
    run_job(short)
    assert engine_requests(endpoint) - before == 10
    first = pd.read_parquet(RunDir(output).samples_parquet)
    assert (first["completion_tokens"] <= 8).all()

    longer = job(endpoint.url, data_dir, output, limit=10, generation={"max_out_len": 16, "temperature": 0})
    before = engine_requests(endpoint)
    run_job(longer)
    assert engine_requests(endpoint) - before == 10
    samples = pd.read_parquet(RunDir(output).samples_parquet)
    assert len(samples) == 10 and (samples["status"] == "ok").all()
    # Random weights rarely stop early: the answers that ran to the limit now have 16 tokens, none has more.
    cut = samples[samples["finish_reason"] == "length"]
    assert len(cut) > 0 and (cut["completion_tokens"] == 16).all() and (samples["completion_tokens"] <= 16).all()

    run_job(longer)  # unchanged: nothing to send
    lines = run_lines(output)
    assert [(r["sent"], r["reused"], r["changed"], r["new"]) for r in lines] == [(10, 0, 0, 10), (10, 0, 10, 0),
                                                                               (0, 10, 0, 0)]
    kept = sorted(RunDir(output).configs_dir.glob("run-*.yaml"))
    assert len(kept) == 3
    assert yaml.safe_load(kept[0].read_text())["eval"]["generation"]["max_out_len"] == 8
    assert yaml.safe_load(kept[2].read_text())["eval"]["generation"]["max_out_len"] == 16
