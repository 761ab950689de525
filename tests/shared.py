"""Constants and builders the session fixtures (conftest.py) and the tests share."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cluster.hosts import SimHost
from eval_jobs.records import SampleRequest, SampleResult
from eval_jobs.work import ClientSettings, distribute
from serve_apps.config import ModelConfig

API_KEY = "test-key-0123"
MAX_MODEL_LEN = 512
MAX_REQUEST_BYTES = 64 * 1024
# Logical CPUs: engines and clients are I/O-bound or pinned by OMP; 2 real cores are enough for what runs at once.
RAY_CPUS = 8
# A declared NPU resource lets the ascend placement and visible-devices path run here (with the simulator).
RAY_NPUS = 4


def tiny_models(tiny_model: Path, *names: str) -> list[ModelConfig]:
    # float32: greedy answers through the endpoint and straight from the engine must match token for token.
    return [ModelConfig(model=str(tiny_model), served_model_name=name, dtype="float32",
                        max_model_len=MAX_MODEL_LEN) for name in names]


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


def fetch_from(host: SimHost | None, url: str) -> str:
    """GET `url` from `host` (None: this machine): 'ok', or the error's name."""
    code = ("import sys, urllib.request\n"
            "try:\n    urllib.request.urlopen(sys.argv[1], timeout=3); print('ok')\n"
            "except Exception as e:\n    print(type(getattr(e, 'reason', e)).__name__)\n")
    argv = [sys.executable, "-c", code, url]
    return subprocess.run(host.command(argv) if host else argv, capture_output=True, text=True,
                          timeout=30).stdout.strip()
