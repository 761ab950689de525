"""The exact engine launch commands, environments and Ray resource requests for ascend, cuda and cpu."""

from __future__ import annotations

import pytest

from serve_apps.config import EngineConfig, ModelConfig
from serve_apps.engine_process import ENGINE_SITE, engine_command, engine_env
from serve_apps.supervisor import replica_resources

PY = "/opt/engine/bin/python"
CKPT = "/data/ckpt/step_400"


def seed_model(**overrides) -> ModelConfig:
    """The seed workflow's server: --tensor-parallel-size 8 --max-model-len 32768 --gpu-memory-utilization 0.92
    --trust-remote-code."""
    fields = dict(model=CKPT, tensor_parallel_size=8, max_model_len=32768, gpu_memory_utilization=0.92,
                  trust_remote_code=True)
    return ModelConfig(**{**fields, **overrides})


# vLLM checks its key (VLLM_API_KEY, from the environment) on /v1 only; this middleware checks it everywhere else.
KEY_GUARD = ["--middleware", "evalcluster_engine_auth.RequireEngineKey"]
SEED_FLAGS = ["--model", CKPT, "--served-model-name", "step_400", "--tensor-parallel-size", "8",
              "--max-model-len", "32768", "--gpu-memory-utilization", "0.92", "--trust-remote-code",
              "--dtype", "auto"]


def test_ascend_command_is_the_seed_vllm_mindspore_server():
    argv = engine_command(seed_model(), EngineConfig(platform="ascend", python=PY), port=41000)
    assert argv == [PY, "-m", "vllm_mindspore.entrypoints", "vllm.entrypoints.openai.api_server", *SEED_FLAGS,
                    "--distributed-executor-backend", "mp", *KEY_GUARD, "--host", "127.0.0.1", "--port", "41000"]


def test_ascend_command_with_tool_call_flags_keeps_the_vllm_mindspore_prefix():
    # BFCL's function-call model config sends `tools` with tool_choice auto: vLLM answers them only with these.
    tools = {"enable-auto-tool-choice": True, "tool-call-parser": "hermes"}
    argv = engine_command(seed_model(engine_args=tools), EngineConfig(platform="ascend", python=PY), port=41000)
    assert argv == [PY, "-m", "vllm_mindspore.entrypoints", "vllm.entrypoints.openai.api_server", *SEED_FLAGS,
                    "--distributed-executor-backend", "mp", "--enable-auto-tool-choice", "--tool-call-parser",
                    "hermes", *KEY_GUARD, "--host", "127.0.0.1", "--port", "41000"]


def test_cuda_command_is_vllm_own_server():
    argv = engine_command(seed_model(), EngineConfig(platform="cuda", python=PY), port=41001)
    assert argv == [PY, "-m", "vllm.entrypoints.openai.api_server", *SEED_FLAGS,
                    "--distributed-executor-backend", "mp", *KEY_GUARD, "--host", "127.0.0.1", "--port", "41001"]


def test_sim_command_is_the_simulator_with_its_timing_and_slots():
    engine = EngineConfig(kind="sim", platform="ascend",
                          sim={"ttft_s": 0.3, "tpot_s": 0.25, "output_tokens": 8, "max_num_seqs": 4})
    argv = engine_command(ModelConfig(model=CKPT), engine, port=41002)
    assert argv[1:] == ["-m", "sim_engine", "--served-model-name", "step_400", "--ttft-s", "0.3",
                        "--tpot-s", "0.25", "--output-tokens", "8", "--max-num-seqs", "4",
                        "--host", "127.0.0.1", "--port", "41002"]


def test_cpu_command_single_device_adds_eager_mode_and_engine_args_in_order():
    model = ModelConfig(model="/m/tiny", served_model_name="tiny", dtype="float32",
                        engine_args={"max-num-seqs": 8, "enable_prefix_caching": False, "seed": 0})
    argv = engine_command(model, EngineConfig(platform="cpu", python=PY), port=41002)
    assert argv == [PY, "-m", "vllm.entrypoints.openai.api_server", "--model", "/m/tiny",
                    "--served-model-name", "tiny", "--tensor-parallel-size", "1",
                    "--gpu-memory-utilization", "0.9", "--dtype", "float32",
                    "--enforce-eager", "--max-num-seqs", "8", "--seed", "0", *KEY_GUARD,
                    "--host", "127.0.0.1", "--port", "41002"]


def test_engine_args_can_turn_a_cpu_default_off():
    model = ModelConfig(model="/m/tiny", engine_args={"enforce-eager": False})
    assert "--enforce-eager" not in engine_command(model, EngineConfig(platform="cpu", python=PY), port=1)


@pytest.mark.parametrize(
    ("platform", "expected"),
    [
        ("ascend", {"num_cpus": 1.0, "resources": {"NPU": 8}}),
        ("cuda", {"num_cpus": 1.0, "num_gpus": 8}),
        ("cpu", {"num_cpus": 1.0}),
    ],
)
def test_one_replica_reserves_all_its_devices(platform, expected):
    assert replica_resources(seed_model(), EngineConfig(platform=platform)) == expected


def test_a_pinned_replica_asks_for_a_sliver_of_its_node():
    options = replica_resources(seed_model(), EngineConfig(platform="ascend"), node_address="10.0.0.3")
    assert options == {"num_cpus": 1.0, "resources": {"NPU": 8, "node:10.0.0.3": 0.001}}


def test_ascend_env_sets_model_backend_and_keeps_visible_devices_but_not_project_paths():
    base = {"ASCEND_RT_VISIBLE_DEVICES": "4,5,6,7", "PYTHONPATH": "/repo", "VIRTUAL_ENV": "/repo/.venv",
            "PATH": "/usr/bin"}
    env = engine_env(EngineConfig(platform="ascend", omp_num_threads=4), base, cpus=1)
    assert env["ASCEND_RT_VISIBLE_DEVICES"] == "4,5,6,7"
    assert env["VLLM_MS_MODEL_BACKEND"] == "Native"
    assert env["OMP_NUM_THREADS"] == "4"
    assert "VIRTUAL_ENV" not in env
    assert env["PYTHONPATH"] == str(ENGINE_SITE)  # the key middleware's directory alone, not the project's paths
    assert sorted(p.name for p in ENGINE_SITE.glob("*.py")) == ["__init__.py", "evalcluster_engine_auth.py"]
    assert "VLLM_CPU_KVCACHE_SPACE" not in env


def test_cpu_env_has_kv_cache_default_and_config_env_wins():
    env = engine_env(EngineConfig(platform="cpu", env={"VLLM_CPU_KVCACHE_SPACE": "4"}), {}, cpus=2)
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "4"
    assert env["OMP_NUM_THREADS"] == "2"
    assert "VLLM_MS_MODEL_BACKEND" not in env
