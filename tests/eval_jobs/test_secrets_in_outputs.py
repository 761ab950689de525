"""A whole evaluation job as users run it (`python -m eval_jobs.run`, its own embedded Ray, a real vLLM CPU engine)
with the endpoint key from $EVALCLUSTER_API_KEY and secrets in engine.env: no file the run writes holds any of them
(report, config.yaml, engine logs, Ray's logs), nor its output."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from eval_jobs.store import RunDir
from serve_apps.config import EngineConfig

pytestmark = pytest.mark.engine

DEMO = "demo_arith_gen_0_shot_chat_prompt"


def files_holding(roots: list[Path], needles: dict[str, str]) -> dict[str, list[str]]:
    """needle name → files under `roots` whose bytes contain it."""
    found: dict[str, list[str]] = {name: [] for name in needles}
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink() and not path.is_socket():
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                for name, needle in needles.items():
                    if needle.encode() in data:
                        found[name].append(str(path))
    return found


def test_no_file_a_run_writes_holds_the_endpoint_key_or_an_engine_env_secret(tiny_model, data_dir, tmp_path):
    endpoint_key = "sk-endpoint-" + secrets.token_hex(12)
    hf_token = "hf_" + secrets.token_hex(12)
    password = "pw-" + secrets.token_hex(12)
    # Short paths: Ray's unix sockets live under its temp dir, and socket paths are limited to 107 bytes.
    home = Path(tempfile.mkdtemp(prefix="ec-home-"))
    ray_tmp = Path(tempfile.mkdtemp(prefix="ec-ray-"))
    out = tmp_path / "run"
    config = {
        "cluster": {"num_cpus": 4},
        "serve": {"port": 0, "engine": {"platform": "cpu", "python": EngineConfig().resolved_python(),
                                        "omp_num_threads": 1, "startup_timeout_s": 600,
                                        "env": {"HF_TOKEN": hf_token, "SERVICE_PASSWORD": password}},
                  "models": [{"model": str(tiny_model), "served_model_name": "tiny-s", "dtype": "float32",
                              "max_model_len": 512}]},
        "eval": {"datasets": [DEMO], "data_dir": str(data_dir), "limit": 4, "clients": 1, "concurrency": 2,
                 "generation": {"max_out_len": 8, "temperature": 0}, "timeout_s": 120, "output": str(out)},
    }
    config_path = tmp_path / "job.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env.update(EVALCLUSTER_API_KEY=endpoint_key, EVALCLUSTER_HOME=str(home), RAY_TMPDIR=str(ray_tmp))
    try:
        done = subprocess.run([sys.executable, "-m", "eval_jobs.run", str(config_path)], env=env, timeout=900,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        # The key did its job: the ingress required it and the clients sent it.
        samples = pd.read_parquet(RunDir(out).samples_parquet)
        assert len(samples) == 4 and (samples["status"] == "ok").all()
        recorded = yaml.safe_load(RunDir(out).config_yaml.read_text())
        assert recorded["serve"]["engine"]["env"] == {"HF_TOKEN": "***", "SERVICE_PASSWORD": "***"}
        assert recorded["serve"]["api_key"] == recorded["eval"]["api_key"] == "***"
        assert list((home / "logs" / "engines").glob("*.log"))  # the engine's log is among what is searched
        assert list(ray_tmp.rglob("*.log"))  # and Ray's session logs
        assert not list((home / "run" / "engine-keys").iterdir())  # the engine's key went with the engine

        needles = {"endpoint key": endpoint_key, "HF_TOKEN": hf_token, "SERVICE_PASSWORD": password}
        leaks = {name: files for name, files in files_holding([out, home, ray_tmp], needles).items() if files}
        assert leaks == {}
        for name, needle in needles.items():
            assert needle not in done.stdout + done.stderr, f"{name} in the job's output"
    finally:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)
