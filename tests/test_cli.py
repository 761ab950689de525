"""The `evalcluster` command as users run it: a real process, a real engine, real HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

from cluster.net import free_port
from serve_apps import models

CLI = [sys.executable, "-m", "evalcluster_cli.main"]


def test_models_path_prints_the_prepared_directory():
    out = subprocess.run([*CLI, "models", "path", "tiny-qwen2"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(models.model_path("tiny-qwen2"))
    bad = subprocess.run([*CLI, "models", "path", "gpt-9"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown model 'gpt-9'" in bad.stderr


def test_datasets_search_shows_where_the_data_file_is_expected(tmp_path):
    out = subprocess.run([*CLI, "datasets", "--search", "aime2025_gen_0_shot_chat", "--data-dir", str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    assert "aime2025_gen_0_shot_chat_prompt" in out
    assert str(tmp_path / "ais_bench/datasets/aime2025/aime2025.jsonl") in out and "MISSING" in out


def test_serve_flags_that_make_no_sense_fail_before_anything_starts():
    bad = subprocess.run([*CLI, "serve", "--model", "/nonexistent", "--tensor-parallel-size", "0"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "serve.models.0.tensor_parallel_size = 0" in bad.stderr


def test_a_public_host_without_an_api_key_is_refused_before_anything_starts(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "EVALCLUSTER_API_KEY"}
    bad = subprocess.run([*CLI, "serve", "--model", "tiny-qwen2", "--host", "0.0.0.0"], capture_output=True,
                         text=True, timeout=120, env=env)
    assert bad.returncode == 2
    assert "serve" in bad.stderr and "host = '0.0.0.0' is reachable from other machines and no API key is set" in bad.stderr
    assert "serve.allow_unauthenticated: true" in bad.stderr  # and how to opt out on purpose


def test_an_api_key_on_the_command_line_is_warned_about(tmp_path):
    out = subprocess.run([*CLI, "serve", "--api-key", "sk-visible", "--tensor-parallel-size", "0", "--model", "x"],
                         capture_output=True, text=True, timeout=120)
    assert "--api-key is visible to every user of this machine in `ps`" in out.stderr
    assert "sk-visible" not in out.stderr


def test_a_missing_checkpoint_directory_fails_before_anything_is_deployed(tmp_path):
    bad = subprocess.run([*CLI, "serve", "--model", str(tmp_path / "step_404"), "--platform", "cpu", "--port", "0"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert f"model step_404: checkpoint directory {tmp_path / 'step_404'} not found" in bad.stderr


def test_a_port_in_use_fails_before_anything_is_deployed(tiny_model):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        bad = subprocess.run([*CLI, "serve", "--model", str(tiny_model), "--platform", "cpu", "--port", str(port)],
                             capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert f"serve.port = {port}: 127.0.0.1:{port} is not free" in bad.stderr


def test_tensor_parallel_beyond_any_node_fails_before_anything_is_deployed(tiny_model):
    """The embedded Ray of this machine declares no NPU: tp 9 on ascend can never be placed."""
    bad = subprocess.run([*CLI, "serve", "--model", str(tiny_model), "--platform", "ascend",
                          "--tensor-parallel-size", "9", "--port", "0"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert f"model {tiny_model.name} needs 9 NPU on one node; largest node has 0" in bad.stderr


@pytest.mark.engine
def test_serve_smollm2_answers_curl_style_requests_and_the_openai_client_then_stops_on_ctrl_c():
    port = free_port()
    command = [*CLI, "serve", "--model", str(models.model_path("smollm2-135m-instruct")), "--platform", "cpu",
               "--port", str(port), "--max-model-len", "1024"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    output: list[str] = []
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line:
                break
            output.append(line)
            if line.startswith("Ctrl-C to stop"):
                break
        assert f"endpoint: http://127.0.0.1:{port}/v1\n" in output, "".join(output[-30:])
        assert "  model: smollm2-135m-instruct\n" in output

        listed = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()
        assert [m["id"] for m in listed["data"]] == ["smollm2-135m-instruct"]
        oai = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        question = [{"role": "user", "content": "What is the capital of France?"}]
        answer = oai.chat.completions.create(model="smollm2-135m-instruct", messages=question, max_tokens=16,
                                             temperature=0)
        assert answer.choices[0].message.content.strip()
        chunks = list(oai.chat.completions.create(model="smollm2-135m-instruct", messages=question, max_tokens=16,
                                                  temperature=0, stream=True))
        assert len(chunks) > 3
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
            answer.choices[0].message.content

        server.send_signal(signal.SIGINT)
        # communicate, not wait: the shutdown's output keeps draining. 300 s: in the full suite this shutdown
        # outlasted 120 s in three CI runs on 2026-11-29 while taking seconds alone (cause not found yet).
        try:
            rest, _ = server.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            rest, _ = server.communicate()
            pytest.fail(f"no exit 300 s after Ctrl-C; its output:\n{rest[-3000:]}")
        assert server.returncode == 0, rest[-3000:]
        assert "shutting down the endpoint" in rest
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
