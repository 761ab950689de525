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


def test_every_eval_field_has_a_flag_and_the_flags_become_the_config():
    from eval_jobs.config import EvalConfig, GenerationConfig, load_job_config
    from evalcluster_cli.config_flags import config_overrides
    from evalcluster_cli.main import build_parser

    parser = build_parser()
    [eval_parser] = [a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith(" eval")]
    dests = {action.dest for action in eval_parser._actions}
    fields = {"eval." + (f.alias or n) for n, f in EvalConfig.model_fields.items() if n != "generation"}
    fields |= {"eval.generation." + n for n in GenerationConfig.model_fields}
    assert fields <= dests, sorted(fields - dests)

    args = parser.parse_args([
        "eval", "--endpoint", "http://127.0.0.1:9", "--datasets", "demo", "--model-config", "vllm_api_general",
        "--chat-template-kwargs", "enable_thinking=false", "--stream-interval", "4", "--timeout", "30",
        "--first-token-timeout-s", "90", "--max-request-time", "600", "--lease-size", "2", "--trackers",
        "--max-out-len", "64", "--extra-body", "repetition_penalty=1.1",
    ])
    job = load_job_config(None, {"eval": config_overrides(args, "eval")})
    cfg = job.eval
    assert cfg.aisbench_model == "vllm_api_general" and cfg.trackers == [] and cfg.lease_size == 2
    assert (cfg.timeout_s, cfg.first_token_timeout_s, cfg.max_request_s) == (30, 90, 600)
    assert cfg.generation.chat_template_kwargs == {"enable_thinking": False}
    assert cfg.generation.extra_body == {"repetition_penalty": 1.1}
    assert cfg.generation.request_fields(0, None)["chat_template_kwargs"] == {"enable_thinking": False}
    assert (cfg.generation.stream_interval, cfg.generation.max_out_len) == (4, 64)


def _subcommand(parser, name):
    [sub] = [a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith(" " + name)]
    return sub


def test_every_config_field_has_a_flag_and_a_variable_in_every_command_that_reads_its_section():
    from cluster.config import ClusterConfig
    from cluster.configfile import config_fields
    from eval_jobs.config import EvalConfig
    from eval_jobs.sweep.config import SweepConfig
    from evalcluster_cli.main import build_parser
    from serve_apps.config import ServeConfig

    parser = build_parser()
    reads = {"serve": {"serve": ServeConfig, "cluster": ClusterConfig},
             "eval": {"eval": EvalConfig, "serve": ServeConfig, "cluster": ClusterConfig},
             "sweep": {"sweep": SweepConfig, "eval": EvalConfig, "serve": ServeConfig, "cluster": ClusterConfig}}
    for command, sections in reads.items():
        actions = {a.dest: a for a in _subcommand(parser, command)._actions}
        for section, model in sections.items():
            for path in (p for p, _ in config_fields(model)):
                dest = ".".join((section, *path))
                assert dest in actions, f"{command}: no flag for {dest}"
                variable = "EVALCLUSTER_" + "__".join(k.upper() for k in (section, *path))
                assert "--" + dest.replace("_", "-") in actions[dest].option_strings
                assert f"[${variable}]" in actions[dest].help, (dest, actions[dest].help)


def test_the_environment_sets_fields_over_the_file_and_the_flags_over_both(tmp_path, monkeypatch):
    from eval_jobs.config import load_job_config
    from eval_jobs.sweep.config import load_sweep_config
    from evalcluster_cli.config_flags import config_overrides
    from evalcluster_cli.main import build_parser

    job_file = tmp_path / "job.yaml"
    job_file.write_text("eval: {endpoint: 'http://127.0.0.1:9', datasets: [demo], num_repeats: 2, limit: 5}\n"
                        "serve: {engine: {platform: ascend}}\n")
    monkeypatch.setenv("EVALCLUSTER_EVAL__NUM_REPEATS", "3")
    monkeypatch.setenv("EVALCLUSTER_EVAL__GENERATION__TEMPERATURE", "0.5")
    monkeypatch.setenv("EVALCLUSTER_EVAL__TRACKERS", "[tensorboard]")
    monkeypatch.setenv("EVALCLUSTER_SERVE__ENGINE__PLATFORM", "cpu")
    monkeypatch.setenv("EVALCLUSTER_CLUSTER__NUM_CPUS", "2")
    args = build_parser().parse_args(["eval", str(job_file), "--temperature", "0.7", "--serve.engine.sim.tpot-s",
                                      "0.02", "--cluster.resources", "NPU=8"])
    overrides = {s: config_overrides(args, s) for s in ("cluster", "serve", "eval")}
    job = load_job_config(job_file, overrides)
    assert (job.eval.num_repeats, job.eval.limit, job.eval.trackers) == (3, 5, ["tensorboard"])  # env > file
    assert job.eval.generation.temperature == 0.7  # flag > env
    assert job.serve.engine.platform == "cpu" and job.serve.engine.sim.tpot_s == 0.02
    assert job.cluster.num_cpus == 2 and job.cluster.resources == {"NPU": 8.0}

    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text("eval: {datasets: [demo]}\nsweep: {checkpoints: [{path: /ckpt/step_1}], settle_s: 9}\n")
    monkeypatch.setenv("EVALCLUSTER_SWEEP__SERVING__TENSOR_PARALLEL_SIZE", "2")
    args = build_parser().parse_args(["sweep", str(sweep_file), "--settle-s", "3", "--output", str(tmp_path / "o"),
                                      "--sweep.checkpoints", "[{glob: '/ckpt/step_*'}]"])
    sweep = load_sweep_config(sweep_file, {s: config_overrides(args, s) for s in ("cluster", "serve", "eval", "sweep")})
    assert (sweep.sweep.settle_s, sweep.sweep.serving.tensor_parallel_size) == (3, 2)
    assert [c.glob for c in sweep.sweep.checkpoints] == ["/ckpt/step_*"] and sweep.eval.output == str(tmp_path / "o")
    assert sweep.serve.engine.platform == "cpu"


def test_a_bad_or_misspelt_config_variable_fails_naming_it():
    base = [*CLI, "eval", "--endpoint", "http://127.0.0.1:9", "--datasets", "x"]
    bad = subprocess.run(base, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "EVALCLUSTER_EVAL__NUM_REPEATS": "three"})
    assert bad.returncode == 2
    assert "environment EVALCLUSTER_EVAL__NUM_REPEATS: eval.num_repeats = 'three'" in bad.stderr, bad.stderr
    misspelt = subprocess.run(base, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "EVALCLUSTER_EVAL__NUM_REPAETS": "3"})
    assert misspelt.returncode == 2
    assert "EVALCLUSTER_EVAL__NUM_REPAETS names no config field (did you mean EVALCLUSTER_EVAL__NUM_REPEATS?)" \
        in misspelt.stderr, misspelt.stderr


def test_a_bad_eval_flag_value_fails_naming_the_field():
    bad = subprocess.run([*CLI, "eval", "--endpoint", "http://127.0.0.1:9", "--datasets", "x", "--stream-interval",
                          "0"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "eval.generation.stream_interval = 0" in bad.stderr, bad.stderr
