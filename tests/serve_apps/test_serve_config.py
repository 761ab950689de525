"""The serve: section's security rules: where the endpoint key comes from, which hosts need one, and checkpoint
paths made absolute before they reach a replica."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.configfile import validate
from cluster.errors import ConfigError
from eval_jobs.config import EvalConfig
from serve_apps.config import EngineConfig, ModelConfig, ServeConfig
from serve_apps.engine_process import engine_command


@pytest.fixture(autouse=True)
def no_key_in_environment(monkeypatch):
    monkeypatch.delenv("EVALCLUSTER_API_KEY", raising=False)


@pytest.fixture
def key_file(tmp_path) -> Path:
    path = tmp_path / "endpoint.key"
    path.write_text("sk-from-file\n")
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.1", "::", "node-1.cluster"])
def test_a_non_loopback_host_without_a_key_is_refused_saying_why(host):
    with pytest.raises(ConfigError) as refused:
        validate(ServeConfig, {"host": host}, source="serve.yaml", section="serve")
    message = str(refused.value)
    assert message.startswith("serve.yaml: serve")
    assert f"host = {host!r} is reachable from other machines and no API key is set" in message
    assert "serve.api_key_file" in message and "serve.allow_unauthenticated: true" in message


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_hosts_need_no_key(host):
    assert ServeConfig(host=host).api_key is None


def test_a_non_loopback_host_is_accepted_with_a_key_or_an_explicit_opt_out(key_file, monkeypatch):
    assert ServeConfig(host="0.0.0.0", api_key_file=str(key_file)).api_key.get_secret_value() == "sk-from-file"
    assert ServeConfig(host="0.0.0.0", allow_unauthenticated=True).api_key is None
    monkeypatch.setenv("EVALCLUSTER_API_KEY", "sk-from-env")
    assert ServeConfig(host="0.0.0.0").api_key.get_secret_value() == "sk-from-env"


def test_eval_reads_its_key_from_a_file_or_the_environment(key_file, monkeypatch):
    assert EvalConfig(datasets=["d"], api_key_file=str(key_file)).api_key.get_secret_value() == "sk-from-file"
    assert EvalConfig(datasets=["d"]).api_key is None
    monkeypatch.setenv("EVALCLUSTER_API_KEY", "sk-from-env")
    assert EvalConfig(datasets=["d"]).api_key.get_secret_value() == "sk-from-env"


def test_a_key_file_others_can_read_is_refused_naming_the_field(key_file):
    key_file.chmod(0o640)
    with pytest.raises(ConfigError, match=r"serve.api_key_file = '.*endpoint.key'.*open to other users"):
        validate(ServeConfig, {"api_key_file": str(key_file)}, source="serve.yaml", section="serve")


def test_home_and_relative_checkpoint_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "runs" / "step_7").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert ModelConfig(model="~/ckpt/step_400").model == str(tmp_path / "home" / "ckpt" / "step_400")
    assert ModelConfig(model="./ckpt/step_5").model == str(tmp_path / "ckpt" / "step_5")
    assert ModelConfig(model="runs/step_7").model == str(tmp_path / "runs" / "step_7")  # exists here: a path
    assert ModelConfig(model="Qwen/Qwen2.5-7B").model == "Qwen/Qwen2.5-7B"  # not here: a hub id, unchanged
    model = ModelConfig(model="~/ckpt/step_400")
    assert model.name == "step_400"
    argv = engine_command(model, EngineConfig(platform="cpu", python="/py"), port=1)
    assert argv[argv.index("--model") + 1] == str(tmp_path / "home" / "ckpt" / "step_400")


def test_the_old_flat_sim_fields_are_refused_saying_where_they_went():
    with pytest.raises(ConfigError) as refused:
        validate(ServeConfig, {"engine": {"kind": "sim", "sim_ttft_s": 0.2}}, source="serve.yaml", section="serve")
    message = str(refused.value)
    assert message.startswith("serve.yaml: serve.engine")
    assert "sim_ttft_s = 0.2: the simulator's settings moved under engine.sim; write `sim: {ttft_s: 0.2}`" in message


def test_the_simulator_settings_are_checked_under_engine_sim():
    engine = validate(ServeConfig, {"engine": {"kind": "sim", "sim": {"ttft_s": 0.2, "max_num_seqs": 4}}},
                      source="serve.yaml", section="serve").engine
    assert (engine.sim.ttft_s, engine.sim.tpot_s, engine.sim.max_num_seqs) == (0.2, 0.01, 4)
    with pytest.raises(ConfigError, match=r"serve.yaml: serve.engine.sim.tpot_s = -1: Input should be greater"):
        validate(ServeConfig, {"engine": {"kind": "sim", "sim": {"tpot_s": -1}}}, source="serve.yaml",
                 section="serve")
