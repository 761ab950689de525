"""The engine as a child process: its exact launch command, its environment, and its lifecycle.

The engine is vLLM's own OpenAI server (or vllm-mindspore's wrapper around it, or the simulator) in its own Python
environment. We trust its /health and /v1/models, never its exit code: `python -m vllm_mindspore.entrypoints`
exits 0 even when the server inside it crashed.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from cluster.paths import evalcluster_home
from serve_apps.config import EngineArgValue, EngineConfig, ModelConfig
from serve_apps.errors import EngineStartupError

VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
ENGINE_HOST = "127.0.0.1"

# Flags the CPU build needs to serve at all on small machines; a model's own engine_args override them.
CPU_DEFAULT_ARGS: dict[str, EngineArgValue] = {"enforce-eager": True}
CPU_DEFAULT_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}

# The engine runs in another Python environment: the project's paths and virtualenv must not leak into it.
ENV_NOT_INHERITED = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")


def free_port(host: str = ENGINE_HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def format_engine_args(args: Mapping[str, EngineArgValue]) -> list[str]:
    """{max-num-seqs: 64, enforce-eager: true, x: false} → ['--max-num-seqs', '64', '--enforce-eager']."""
    out: list[str] = []
    for key, value in args.items():
        flag = "--" + key.lstrip("-").replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is not False:
            out += [flag, str(value)]
    return out


def engine_command(model: ModelConfig, engine: EngineConfig, port: int) -> list[str]:
    """The exact argv that starts one engine for `model` on `port`."""
    python = engine.resolved_python()
    if engine.kind == "sim":
        argv = [sys.executable, "-m", "serve_apps.sim_engine", "--served-model-name", model.name,
                "--ttft-s", str(engine.sim_ttft_s), "--tpot-s", str(engine.sim_tpot_s)]
        if model.max_model_len:
            argv += ["--max-model-len", str(model.max_model_len)]
        if engine.sim_output_tokens:
            argv += ["--output-tokens", str(engine.sim_output_tokens)]
        if engine.sim_max_num_seqs:
            argv += ["--max-num-seqs", str(engine.sim_max_num_seqs)]
        return argv + ["--host", ENGINE_HOST, "--port", str(port)]

    if engine.platform == "ascend":
        # vllm_mindspore must be imported before vllm in every process; its entrypoints module does that.
        prefix = [python, "-m", "vllm_mindspore.entrypoints", VLLM_SERVER_MODULE]
    else:
        prefix = [python, "-m", VLLM_SERVER_MODULE]
    flags = ["--model", model.model, "--served-model-name", model.name,
             "--tensor-parallel-size", str(model.tensor_parallel_size)]
    if model.max_model_len:
        flags += ["--max-model-len", str(model.max_model_len)]
    flags += ["--gpu-memory-utilization", str(model.gpu_memory_utilization)]
    if model.trust_remote_code:
        flags.append("--trust-remote-code")
    flags += ["--dtype", model.dtype]
    extra: dict[str, EngineArgValue] = {}
    if engine.platform == "cpu":
        extra.update(CPU_DEFAULT_ARGS)
    if model.tensor_parallel_size > 1:
        # vLLM's multiprocessing executor on the devices this replica holds; its Ray executor would nest placement
        # groups inside ours (vLLM #29688, Ray #59064).
        extra["distributed-executor-backend"] = "mp"
    extra.update(model.engine_args)
    return prefix + flags + format_engine_args(extra) + ["--host", ENGINE_HOST, "--port", str(port)]


def engine_env(engine: EngineConfig, base: Mapping[str, str], *, cpus: float) -> dict[str, str]:
    """The engine's environment: the replica's (which carries Ray's ASCEND_RT_VISIBLE_DEVICES / CUDA_VISIBLE_DEVICES)
    minus the project's Python paths, with thread counts from config rather than Ray's worker default of 1."""
    env = {k: v for k, v in base.items() if k not in ENV_NOT_INHERITED}
    env["OMP_NUM_THREADS"] = str(engine.omp_num_threads or max(1, int(cpus)))
    env.setdefault("VLLM_CACHE_ROOT", str(evalcluster_home() / "cache" / "vllm"))
    if engine.platform == "ascend":
        env["VLLM_MS_MODEL_BACKEND"] = engine.ascend_model_backend
    if engine.platform == "cpu":
        for key, value in CPU_DEFAULT_ENV.items():
            env.setdefault(key, value)
    env.update(engine.env)
    return env


def _lower_niceness() -> None:
    """Runs in the child before exec: drop Ray's worker niceness where allowed (the engine is the real work)."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 0)
    except OSError:
        pass  # lowering niceness needs privileges; the engine then runs at Ray's worker priority


@dataclass
class EngineProcess:
    """One running engine server. `start()` then `wait_ready()`; `stop()` terminates → waits → kills its group."""

    argv: list[str]
    env: dict[str, str]
    port: int
    log_path: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://{ENGINE_HOST}:{self.port}"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            # The guard leads a new process group holding the engine and everything it starts, and ends that group
            # with the engine or with us (serve_apps/engine_guard.py).
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "serve_apps.engine_guard", "--", *self.argv],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=_lower_niceness,
            )

    def alive(self) -> bool:
        if self.proc is None:
            return False
        if self.proc.poll() is None:
            return True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # a guard killed with SIGKILL could not clean up its group
        return False

    def log_tail(self, lines: int = 25) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(collections.deque(f, maxlen=lines))
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout_s: float, served_model_name: str) -> None:
        """Poll /health and /v1/models until the engine serves `served_model_name`; fail fast if it exits."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.base_url, timeout=5.0) as client:
            while time.monotonic() < deadline:
                if not self.alive():
                    code = self.proc.returncode if self.proc else None
                    raise EngineStartupError(
                        f"engine for {served_model_name!r} exited (code {code}) before it was ready; "
                        f"command: {' '.join(self.argv)}\nlast log lines ({self.log_path}):\n{self.log_tail()}"
                    )
                try:
                    if client.get("/health").status_code == 200:
                        ids = [m.get("id") for m in client.get("/v1/models").json().get("data", [])]
                        if served_model_name in ids:
                            return
                except (httpx.HTTPError, ValueError):
                    pass
                time.sleep(0.5)
        self.stop()
        raise EngineStartupError(
            f"engine for {served_model_name!r} not ready after {timeout_s:.0f} s; "
            f"command: {' '.join(self.argv)}\nlast log lines ({self.log_path}):\n{self.log_tail()}"
        )

    def stop(self, grace_s: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # TERM to the guard alone: it passes one TERM to its group (a second one, sent to the group directly, hits
        # servers in the middle of their graceful shutdown and aiohttp then hangs until the guard's KILL). KILL to
        # the whole group: vLLM's engine core and workers too.
        for kill, sig, wait_s in ((os.kill, signal.SIGTERM, grace_s), (os.killpg, signal.SIGKILL, 5.0)):
            try:
                kill(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait_s)
                return
            except subprocess.TimeoutExpired:
                continue


def launch_engine(model: ModelConfig, engine: EngineConfig, *, cpus: float) -> EngineProcess:
    """Start the engine for `model` on a free loopback port and wait until it serves; raises EngineStartupError."""
    port = free_port()
    process = EngineProcess(
        argv=engine_command(model, engine, port),
        env=engine_env(engine, os.environ, cpus=cpus),
        port=port,
        log_path=evalcluster_home() / "logs" / "engines" / f"{model.name.replace('/', '_')}-{port}.log",
    )
    process.start()
    try:
        process.wait_ready(engine.startup_timeout_s, model.name)
    except BaseException:
        process.stop()
        raise
    return process
