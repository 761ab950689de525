"""Constants and builders the session fixtures (conftest.py) and the tests share."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from cluster.hosts import SimHost
from eval_jobs.dataset_configs import resolve_config
from eval_jobs.records import SampleRequest, SampleResult
from eval_jobs.work import ClientSettings, distribute
from serve_apps.config import ModelConfig
from serve_apps.engine_process import engine_headers

API_KEY = "test-key-0123"
MAX_MODEL_LEN = 512
MAX_REQUEST_BYTES = 64 * 1024
# Logical CPUs: engines and clients are I/O-bound or pinned by OMP; 2 real cores are enough for what runs at once.
RAY_CPUS = 8
# A declared NPU resource lets the ascend placement and visible-devices path run here (with the simulator).
RAY_NPUS = 4


TOOL_CALL_ARGS = {"enable-auto-tool-choice": True, "tool-call-parser": "hermes"}


def tiny_models(tiny_model: Path, *names: str) -> list[ModelConfig]:
    # float32: greedy answers through the endpoint and straight from the engine must match token for token.
    # Tool calls as BFCL's function-call model config sends them (`tools`, tool_choice auto): vLLM answers those only
    # with a tool-call parser; it changes nothing for requests without tools.
    return [ModelConfig(model=str(tiny_model), served_model_name=name, dtype="float32",
                        max_model_len=MAX_MODEL_LEN, engine_args=TOOL_CALL_ARGS) for name in names]


def distribute_with_fault(
    requests: list[SampleRequest], settings: ClientSettings, fault: Callable[[], None], *, after: int
) -> list[SampleResult]:
    """Run `requests` through 2 client actors and call `fault()` once `after` results are in (mid-run: requests
    are in flight and leases held); return every result once the run ends."""
    results: list[SampleResult] = []
    lock = threading.Lock()

    def collect(batch: list[SampleResult]) -> None:
        with lock:
            results.extend(batch)

    runner = threading.Thread(target=distribute, args=(requests, settings, 2, collect))
    runner.start()
    deadline = time.monotonic() + 120
    while len(results) < after and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        fault()
    finally:
        runner.join(timeout=300)
    assert not runner.is_alive(), "the run did not end after the fault"
    return results


def broken_config(tmp_path: Path) -> Path:
    """The demo dataset under another name, with a postprocessor configured without the `options` it needs: AISBench
    raises (TypeError) the moment it judges an answer, as a mistyped dataset config does."""
    text = resolve_config("demo_arith_gen_0_shot_chat_prompt").read_text()
    text = text.replace('abbr="demo_arith"', 'abbr="demo_arith_broken"')
    text = text.replace("pred_postprocessor=dict(type=math_postprocess_v2)", "pred_postprocessor=dict(type=first_option_postprocess)")
    text = text.replace("from ais_bench.benchmark.openicl.icl_prompt_template",
                        "from ais_bench.benchmark.utils.postprocess.text_postprocessors import first_option_postprocess\n"
                        "from ais_bench.benchmark.openicl.icl_prompt_template")
    path = tmp_path / "demo_arith_broken_gen.py"
    path.write_text(text)
    return path


def fetch_from(host: SimHost | None, url: str) -> str:
    """GET `url` from `host` (None: this machine): 'ok', or the error's name."""
    code = ("import sys, urllib.request\n"
            "try:\n    urllib.request.urlopen(sys.argv[1], timeout=3); print('ok')\n"
            "except Exception as e:\n    print(type(getattr(e, 'reason', e)).__name__)\n")
    argv = [sys.executable, "-c", code, url]
    return subprocess.run(host.command(argv) if host else argv, capture_output=True, text=True,
                          timeout=30).stdout.strip()


@contextlib.contextmanager
def sim_engine(name: str = "sim", *, ttft_s: float = 0.1, tpot_s: float = 0.05,
               output_tokens: int | None = 8) -> Iterator[str]:
    """The simulated-latency engine as its own process on a free loopback port; yields its base URL. For tests where
    time matters (its answers are filler, never scored)."""
    from serve_apps.engine_process import free_port

    port = free_port()
    argv = [sys.executable, "-m", "sim_engine", "--served-model-name", name, "--ttft-s", str(ttft_s),
            "--tpot-s", str(tpot_s), "--host", "127.0.0.1", "--port", str(port)]
    if output_tokens is not None:
        argv += ["--output-tokens", str(output_tokens)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def sim_requests(url: str) -> int:
    """Generation requests the simulated engine at `url` received (a re-sent request counts again)."""
    return int(httpx.get(url + "/sim/stats").json()["requests"])


def engine_requests(endpoint, model: str = "tiny-a") -> float:
    """Requests the engine itself finished, from vLLM's own Prometheus counter."""
    info = endpoint.engine_info(model)
    text = httpx.get(info["url"] + "/metrics", headers=engine_headers(info)).text
    return sum(float(m) for m in re.findall(r'^vllm:request_success_total\{[^}]*model_name="%s"[^}]*\} (\S+)'
                                            % re.escape(model), text, flags=re.M))
