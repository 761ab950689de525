"""The engine as a child process: its exact launch command, its environment, and its lifecycle.

The engine is vLLM's own OpenAI server (or vllm-mindspore's wrapper around it) in its own Python environment,
or the simulator (`sim_engine/`, in the project's). We trust its /health and /v1/models, never its exit code:
`python -m vllm_mindspore.entrypoints` exits 0 even when the server inside it crashed.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from cluster.net import free_port
from cluster.paths import evalcluster_home
from cluster.secrets import redact_argv, write_secret_file
from serve_apps.config import EngineArgValue, EngineConfig, ModelConfig
from serve_apps.engine_site import evalcluster_engine_auth as engine_auth
from serve_apps.errors import EngineStartupError
from sim_engine.config import sim_command

__all__ = ["EngineProcess", "engine_command", "engine_env", "engine_headers", "free_port", "launch_engine"]

log = logging.getLogger(__name__)

VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
ENGINE_HOST = "127.0.0.1"

# Flags the CPU build needs to serve at all on small machines; a model's own engine_args override them.
CPU_DEFAULT_ARGS: dict[str, EngineArgValue] = {"enforce-eager": True}
CPU_DEFAULT_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}

# The engine runs in another Python environment: the project's paths and virtualenv must not leak into it.
ENV_NOT_INHERITED = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
# The engine's own PYTHONPATH: this directory alone, for the key middleware vLLM loads (engine_site/).
ENGINE_SITE = Path(engine_auth.__file__).parent
KEY_MIDDLEWARE = "evalcluster_engine_auth.RequireEngineKey"
# Tries at a free port: another process may take the one chosen before the engine binds it.
PORT_ATTEMPTS = 3


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
        return sim_command(engine.sim, model.name, max_model_len=model.max_model_len, host=ENGINE_HOST,
                           port=port)

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
    # vLLM's own key check (VLLM_API_KEY) covers /v1 only; the middleware covers every other route but /health.
    guard = ["--middleware", KEY_MIDDLEWARE]
    return prefix + flags + format_engine_args(extra) + guard + ["--host", ENGINE_HOST, "--port", str(port)]


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
    # The key middleware's directory, and nothing else of the project, ahead of any PYTHONPATH the config sets.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ENGINE_SITE), engine.env.get("PYTHONPATH")) if p)
    return env


@dataclass
class EngineProcess:
    """One running engine server. `start()` then `wait_ready()`; `stop()` terminates → waits → kills its group.

    `api_key` is the engine's own key (in its environment as VLLM_API_KEY, never in argv): every request to the
    engine carries it in `headers`. `key_file` holds the same key (mode 0600) for an operator on the node who
    wants to talk to the engine directly; the guard deletes it when the engine ends.
    """

    argv: list[str]
    env: dict[str, str] = field(repr=False)
    port: int
    log_path: Path
    api_key: str = field(default="", repr=False)
    key_file: Path | None = None
    proc: subprocess.Popen | None = field(default=None, repr=False)
    _log_offset: int = field(default=0, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://{ENGINE_HOST}:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        guard = [sys.executable, "-m", "serve_apps.engine_guard"]
        if self.key_file:
            guard += ["--remove-on-exit", str(self.key_file)]
        with open(self.log_path, "ab") as log_file:
            self._log_offset = log_file.tell()
            # The guard leads a new process group holding the engine and everything it starts, and ends that group
            # with the engine or with us (serve_apps/engine_guard.py). No preexec_fn: we are a multithreaded Ray
            # worker, where Python documents it as deadlock-prone; start_new_session is done by the C fork code,
            # and the rest (priority, parent-death signal) by the single-threaded guard.
            self.proc = subprocess.Popen(
                [*guard, "--", *self.argv],
                env=self.env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
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

    def port_was_taken(self) -> bool:
        """Whether this start failed because another process bound the port first (vLLM binds before it loads
        the model, so that failure comes within seconds)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                return f"[Errno {errno.EADDRINUSE}]".encode() in f.read()  # how Python prints an OSError
        except FileNotFoundError:
            return False

    def _describe(self) -> str:
        return (f"command: {' '.join(redact_argv(self.argv))}\n"
                f"last log lines ({self.log_path}):\n{self.log_tail()}")

    def wait_ready(self, timeout_s: float, served_model_name: str) -> None:
        """Poll /health and /v1/models until the engine serves `served_model_name`; fail fast if it exits."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.base_url, headers=self.headers, timeout=5.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                if not self.alive():
                    code = self.proc.returncode if self.proc else None
                    raise EngineStartupError(
                        f"engine for {served_model_name!r} exited (code {code}) before it was ready; {self._describe()}"
                    )
                try:
                    if client.get("/health").status_code == 200:
                        ids = [m.get("id") for m in client.get("/v1/models").json().get("data", [])]
                        if served_model_name in ids:
                            return
                except (httpx.HTTPError, ValueError, AttributeError):
                    pass  # not up yet, or someone else's server on this port (it does not know our key)
                time.sleep(0.5)
        self.stop()
        raise EngineStartupError(
            f"engine for {served_model_name!r} not ready after {timeout_s:.0f} s; {self._describe()}"
        )

    def stop(self, grace_s: float = 15.0) -> None:
        try:
            self._stop(grace_s)
        finally:
            if self.key_file:  # the guard removes it; not when it was killed with SIGKILL
                self.key_file.unlink(missing_ok=True)

    def _stop(self, grace_s: float) -> None:
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


def engine_headers(info: Mapping[str, str]) -> dict[str, str]:
    """Headers for talking to one engine directly, given its `engine_info()`: its key, read from its key file
    (mode 0600, so only the user the engine runs as, on its node, can)."""
    return {"Authorization": f"Bearer {Path(info['key_file']).read_text().strip()}"}


def engine_keys_dir() -> Path:
    return evalcluster_home() / "run" / "engine-keys"


def launch_engine(model: ModelConfig, engine: EngineConfig, *, cpus: float) -> EngineProcess:
    """Start the engine for `model` on a free loopback port, with a random key of its own, and wait until it
    serves; raises EngineStartupError. A port someone else bound first is retried on another one."""
    safe_name = model.name.replace("/", "_")
    for attempt in range(1, PORT_ATTEMPTS + 1):
        port = free_port(ENGINE_HOST)
        key = secrets.token_urlsafe(32)
        env = engine_env(engine, os.environ, cpus=cpus)
        env[engine_auth.KEY_ENV] = key  # after the config's env: an engine.env entry must not replace our key
        process = EngineProcess(
            argv=engine_command(model, engine, port), env=env, port=port,
            log_path=evalcluster_home() / "logs" / "engines" / f"{safe_name}-{port}.log", api_key=key,
            key_file=write_secret_file(engine_keys_dir() / f"{safe_name}-{port}-{uuid.uuid4().hex[:8]}.key", key),
        )
        try:
            process.start()
            process.wait_ready(engine.startup_timeout_s, model.name)
            return process
        except EngineStartupError:
            process.stop()
            if attempt < PORT_ATTEMPTS and process.port_was_taken():
                log.warning("engine for %s: port %d was taken before it bound it; trying another", model.name, port)
                continue
            raise
        except BaseException:
            process.stop()
            raise
    raise AssertionError("unreachable: the last attempt returns or raises")
