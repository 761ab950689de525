"""Secret-looking names, redaction of configs and argv, key files, and errors that never print a key."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from cluster.configfile import validate
from cluster.errors import ConfigError
from cluster.secrets import api_key_from, looks_secret, read_secret_file, redact, redact_argv
from serve_apps.config import ServeConfig


@pytest.mark.parametrize("name", ["HF_TOKEN", "api_key", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD", "hf-token",
                                  "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY"])
def test_secret_names(name):
    assert looks_secret(name)


@pytest.mark.parametrize("name", ["OMP_NUM_THREADS", "VLLM_CPU_KVCACHE_SPACE", "api_key_file", "RAY_AUTH_TOKEN_PATH",
                                  "model", "top_k"])
def test_names_that_are_not_secrets(name):
    assert not looks_secret(name)


def test_redact_hides_secret_strings_at_any_depth_and_keeps_the_rest():
    data = {"serve": {"api_key": "sk-1", "engine": {"env": {"HF_TOKEN": "hf_x", "OMP_NUM_THREADS": "2"}},
                      "models": [{"engine_args": {"hf-token": "hf_y", "max-num-seqs": 8}}]},
            "eval": {"api_key": None, "api_key_file": "/run/key", "generation": {"max_tokens": 16}}}
    assert redact(data) == {
        "serve": {"api_key": "***", "engine": {"env": {"HF_TOKEN": "***", "OMP_NUM_THREADS": "2"}},
                  "models": [{"engine_args": {"hf-token": "***", "max-num-seqs": 8}}]},
        "eval": {"api_key": None, "api_key_file": "/run/key", "generation": {"max_tokens": 16}}}


def test_redact_argv_hides_the_value_of_secret_flags():
    argv = ["python", "-m", "x", "--hf-token", "hf_x", "--api-key=sk", "--model", "/m", "--max-num-seqs", "8"]
    assert redact_argv(argv) == ["python", "-m", "x", "--hf-token", "***", "--api-key=***", "--model", "/m",
                                 "--max-num-seqs", "8"]


def test_key_files_must_be_private_and_not_empty(tmp_path):
    key = tmp_path / "key"
    key.write_text("sk-file\n")
    key.chmod(0o644)
    with pytest.raises(ValueError, match="open to other users.*chmod 600"):
        read_secret_file(key)
    key.chmod(0o600)
    assert read_secret_file(key) == "sk-file"
    key.write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        read_secret_file(key)
    with pytest.raises(ValueError, match="cannot read"):
        read_secret_file(tmp_path / "missing")


def test_key_sources_in_order_given_file_environment(tmp_path, monkeypatch):
    key = tmp_path / "key"
    key.write_text("sk-file")
    key.chmod(0o600)
    monkeypatch.setenv("EVALCLUSTER_API_KEY", "sk-env")
    assert api_key_from(SecretStr("sk-given"), None).get_secret_value() == "sk-given"
    assert api_key_from(None, str(key)).get_secret_value() == "sk-file"
    assert api_key_from(None, None).get_secret_value() == "sk-env"
    monkeypatch.delenv("EVALCLUSTER_API_KEY")
    assert api_key_from(None, None) is None
    with pytest.raises(ValueError, match="not both"):
        api_key_from(SecretStr("sk-given"), str(key))


def test_a_config_error_about_the_key_does_not_print_it(tmp_path):
    key = tmp_path / "key"
    key.write_text("sk-file")
    key.chmod(0o600)
    for data in ({"api_key": "sk-do-not-print", "api_key_file": str(key)}, {"api_key": ["sk-do-not-print"]},
                 {"api_key": "sk-do-not-print", "models": [{"model": "/m", "served_model_name": "a"},
                                                           {"model": "/m", "served_model_name": "a"}]}):
        with pytest.raises(ConfigError) as failed:
            validate(ServeConfig, data, source="x.yaml", section="serve")
        assert "x.yaml: serve" in str(failed.value)
        assert "sk-do-not-print" not in str(failed.value)
