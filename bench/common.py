"""What the benchmarks share: their own local Ray, engine subprocesses, a minimal reference client, and results."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

import cluster  # noqa: F401  (before anything imports ray: it sets Ray's environment)
from cluster.config import ClusterConfig
from cluster.connection import ray_session
from cluster.paths import REPO_ROOT, evalcluster_home
from eval_jobs.config import GenerationConfig
from serve_apps.config import EngineConfig
from serve_apps.engine_process import free_port

QUICK = "--quick" in sys.argv[1:] or os.environ.get("BENCH_QUICK") == "1"
DATASET = "demo_arith_gen_0_shot_chat_prompt"
SMOLLM2 = evalcluster_home() / "models" / "smollm2-135m-instruct"
# float32: this AVX2-only CPU has no native bf16 and batches float32 ~2.5x faster (bench/history/2026-11-28.md). That matters
# for run time, not for the ratios: both sides always share one engine and one dtype.
DTYPE = "float32"
ENGINE_PYTHON = EngineConfig().resolved_python()
LOG_DIR = evalcluster_home() / "bench-logs"
# bench.run sets this so it can collect every script's results without parsing their output.
RESULTS_ENV = "BENCH_RESULTS_FILE"


def eval_body(model: str, messages: list[dict], max_tokens: int, **generation) -> dict:
    """The body an evaluation sends for one sample (before its client adds streaming options), with evalcluster's
    default generation settings: what every peer of a benchmark sends too, so the engine does the same work."""
    fields = GenerationConfig(max_out_len=max_tokens, **generation).request_fields(repeat=0, row_max_out_len=None)
    return {"model": model, "messages": messages, **fields}


# ---------------------------------------------------------------- Ray


@contextlib.contextmanager
def local_ray(num_cpus: int = 4) -> Iterator[None]:
    """An embedded loopback Ray of our own (never a cluster found on the machine), stopped on exit. Its CPUs are
    what Ray schedules by, not what the box has: a vLLM replica reserves 1, client actors 0."""
    with ray_session(ClusterConfig(num_cpus=num_cpus)):
        yield


# ---------------------------------------------------------------- servers we start ourselves


@contextlib.contextmanager
def server_process(name: str, argv: list[str], env: dict[str, str], port: int,
                   startup_timeout_s: float = 600) -> Iterator[str]:
    """Start a server in its own process group, yield its base URL once /v1/models answers, stop the group.

    Its own group, because vLLM forks an engine core that must go with it; we signal only that group.
    """
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{name}.log"
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {log_path}:\n"
                                   + log_path.read_text(errors="replace")[-2000:])
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/v1/models", timeout=5, trust_env=False).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after {startup_timeout_s:.0f} s; see {log_path}")
            time.sleep(1.0)
        yield url
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group `proc` leads (it was started with start_new_session), SIGKILL after 30 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def engine_env(**extra: str) -> dict[str, str]:
    """The environment for an engine of the other venv: ours minus what would leak our packages into it."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.setdefault("VLLM_CACHE_ROOT", str(evalcluster_home() / "cache" / "vllm"))
    env.update(extra)
    return env


@contextlib.contextmanager
def vllm_server(served_name: str = "smollm2", model: Path = SMOLLM2) -> Iterator[str]:
    """A bare vLLM CPU server (the engine environment's own OpenAI server), as a user would start it by hand."""
    port = free_port()
    argv = [ENGINE_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
            "--served-model-name", served_name, "--dtype", DTYPE, "--max-model-len", "1024",
            "--enforce-eager", "--host", "127.0.0.1", "--port", str(port)]
    with server_process(f"vllm-{served_name}", argv, engine_env(VLLM_CPU_KVCACHE_SPACE="1"), port) as url:
        yield url


@contextlib.contextmanager
def sim_server(served_name: str = "sim", output_tokens: int = 4) -> Iterator[str]:
    """evalcluster's simulated engine with zero latency: what is left to measure is the client."""
    port = free_port()
    argv = [sys.executable, "-m", "sim_engine", "--served-model-name", served_name,
            "--ttft-s", "0", "--tpot-s", "0", "--output-tokens", str(output_tokens),
            "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with server_process(f"sim-{served_name}", argv, env, port, startup_timeout_s=60) as url:
        yield url


# ---------------------------------------------------------------- the minimal reference client


@dataclass
class Timing:
    latency_s: float
    ttft_s: float | None
    completion_tokens: int | None


async def _minimal(url: str, bodies: list[dict], concurrency: int, headers: dict[str, str] | None = None,
                   ) -> tuple[float, list[Timing]]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=600, trust_env=False) as client:

        async def one(body: dict) -> Timing:
            async with gate:
                t0 = time.perf_counter()
                if not body.get("stream"):
                    resp = await client.post("/v1/chat/completions", json=body)
                    resp.raise_for_status()
                    usage = resp.json().get("usage") or {}
                    return Timing(time.perf_counter() - t0, None, usage.get("completion_tokens"))
                ttft, tokens = None, None
                async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                    resp.raise_for_status()
                    async for line in resp.aiter_lines():
                        if not line.startswith("data:") or line.endswith("[DONE]"):
                            continue
                        chunk = json.loads(line[5:])
                        # vLLM's first chunk carries only the role: TTFT is the first chunk with text.
                        if ttft is None and any((c.get("delta") or {}).get("content") for c in chunk["choices"]):
                            ttft = time.perf_counter() - t0
                        if chunk.get("usage"):
                            tokens = chunk["usage"].get("completion_tokens")
                return Timing(time.perf_counter() - t0, ttft, tokens)

        t0 = time.perf_counter()
        timings = await asyncio.gather(*(one(b) for b in bodies))
        return time.perf_counter() - t0, list(timings)


def minimal_client(url: str, bodies: list[dict], concurrency: int, headers: dict[str, str] | None = None,
                   ) -> tuple[float, list[Timing]]:
    """Send `bodies` with at most `concurrency` in flight; (wall seconds, per-request timings). One process,
    one event loop, no retries, no bookkeeping: the least any client must do."""
    return asyncio.run(_minimal(url, bodies, concurrency, headers))


# ---------------------------------------------------------------- statistics and results


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


@dataclass
class Result:
    bench: str
    metric: str
    value: float
    unit: str = ""
    target: str = ""  # e.g. ">= 0.97"; empty: informational
    note: str = ""

    @property
    def verdict(self) -> str:
        if not self.target:
            return ""
        op, bound = self.target.split()
        ok = self.value >= float(bound) if op == ">=" else self.value <= float(bound)
        return "met" if ok else "MISSED"


def report(results: list[Result]) -> None:
    """Print the results last (ratios first among them is the caller's order) and hand them to bench.run."""
    print()
    for r in results:
        target = f"  target {r.target}: {r.verdict}" if r.target else ""
        note = f"  ({r.note})" if r.note else ""
        print(f"{r.bench}  {r.metric} = {r.value:.3f}{' ' + r.unit if r.unit else ''}{target}{note}")
    if path := os.environ.get(RESULTS_ENV):
        with open(path, "a") as f:
            for r in results:
                f.write(json.dumps({**asdict(r), "verdict": r.verdict, "quick": QUICK}) + "\n")
