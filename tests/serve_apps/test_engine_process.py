"""launch_engine outside Ray, with the simulated engine: its own key, kept out of argv, and a port someone else
took between choosing and binding retried on another."""

from __future__ import annotations

import errno
import os
import socket
import stat

import httpx
import pytest

from serve_apps import engine_process
from serve_apps.config import EngineConfig, ModelConfig
from serve_apps.engine_process import launch_engine


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("EVALCLUSTER_HOME", str(tmp_path))
    return tmp_path


def test_a_port_taken_before_the_engine_binds_it_is_retried_on_another(home, monkeypatch):
    # The race, made certain: the first port handed out is one another process already listens on.
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    taken_port = taken.getsockname()[1]
    handed_out = iter([taken_port])
    real_free_port = engine_process.free_port
    monkeypatch.setattr(engine_process, "free_port", lambda host: next(handed_out, None) or real_free_port(host))
    try:
        process = launch_engine(ModelConfig(model="/ckpt/retry"), EngineConfig(kind="sim", startup_timeout_s=60),
                                cpus=1)
    finally:
        taken.close()
    try:
        assert process.port != taken_port
        first_log = home / "logs" / "engines" / f"retry-{taken_port}.log"
        assert f"[Errno {errno.EADDRINUSE}]" in first_log.read_text()
        assert httpx.get(process.base_url + "/v1/models", headers=process.headers).status_code == 200
        assert httpx.get(process.base_url + "/v1/models").status_code == 401
    finally:
        process.stop()
    assert list((home / "run" / "engine-keys").iterdir()) == []  # both attempts' key files are gone


def test_the_engine_key_is_in_its_environment_and_a_private_file_never_in_argv(home):
    process = launch_engine(ModelConfig(model="/ckpt/keyed"), EngineConfig(kind="sim", startup_timeout_s=60), cpus=1)
    try:
        key = process.api_key
        assert len(key) >= 32
        assert process.key_file.read_text() == key
        assert stat.S_IMODE(process.key_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(process.key_file.parent.stat().st_mode) == 0o700
        group = [int(p) for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == process.proc.pid]
        assert len(group) >= 2  # the guard and the engine
        for pid in group:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                assert key.encode() not in f.read()
        with open(f"/proc/{max(group)}/environ", "rb") as f:
            assert f"VLLM_API_KEY={key}".encode() in f.read().split(b"\0")
        assert key not in repr(process)
    finally:
        process.stop()
    assert not process.key_file.exists()


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None
