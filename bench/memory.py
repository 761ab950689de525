"""Benchmark 5: memory of the driver and of one client actor does not grow with the dataset.

The evaluation path of `eval_jobs.evaluation` (work queue, client actors, durable store, scoring-free) sends 1,000 and then
10,000 samples to the zero-latency simulated engine; each size runs in a fresh process, so peaks don't carry over.
Peak RSS is sampled every 0.2 s (the driver and each client actor). The peer is the same
measurement at 1,000 samples: the ratio 10k ÷ 1k should stay near 1.

    python -m bench.memory [--quick]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from bench.common import QUICK, Result, eval_body, local_ray, report, sim_server
from eval_jobs.records import SampleKey, SampleRequest
from eval_jobs.store import SampleStore
from eval_jobs.work import ClientSettings, distribute

SIZES = (500, 2000) if QUICK else (1000, 10000)
PROMPT = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. " * 4


def client_actor_pids() -> list[int]:
    """Pids of the client actors: Ray titles an actor's process `ray::EvalClient…`."""
    return [p.pid for p in psutil.process_iter(["cmdline"])
            if (p.info["cmdline"] or [""])[0].startswith("ray::EvalClient")]


def measure(size: int) -> dict[str, float]:
    """One run of `size` samples; peak RSS in MiB of the driver and of the biggest client actor."""
    peaks = {"driver": 0.0, "client": 0.0}
    stop = threading.Event()

    def sample() -> None:
        me = psutil.Process()
        while not stop.is_set():
            peaks["driver"] = max(peaks["driver"], me.memory_info().rss / 2**20)
            for pid in client_actor_pids():
                try:
                    peaks["client"] = max(peaks["client"], psutil.Process(pid).memory_info().rss / 2**20)
                except psutil.NoSuchProcess:
                    pass
            stop.wait(0.2)

    with local_ray(num_cpus=2), sim_server("sim") as url, tempfile.TemporaryDirectory() as tmp:
        store = SampleStore(Path(tmp) / "samples.jsonl")
        requests = [SampleRequest(key=SampleKey("sim", "bench", i, 0), endpoint=url,
                                  body=eval_body("sim", [{"role": "user", "content": f"{PROMPT}{i}"}], 4))
                    for i in range(size)]
        settings = ClientSettings(concurrency=16, lease_size=4, timeout_s=60, max_retries=1, backoff_s=0.1)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        distribute(requests, settings, 2, store.append)
        seconds = time.perf_counter() - t0
        stop.set()
        sampler.join()
        assert len(store.finished_keys()) == size
    return {**peaks, "seconds": seconds}


def main() -> None:
    if "--size" in sys.argv:
        print(json.dumps(measure(int(sys.argv[sys.argv.index("--size") + 1]))))
        return
    runs = {}
    for size in SIZES:
        out = subprocess.run([sys.executable, "-m", "bench.memory", "--size", str(size)], capture_output=True,
                             text=True, check=True)
        runs[size] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{size} samples: {runs[size]}")
    small, large = SIZES
    bench, note = "memory", f"{small} vs {large} samples, 2 clients x 16 in flight, zero-latency simulator"
    report([
        Result(bench, f"driver peak RSS at {large}", runs[large]["driver"], "MiB"),
        Result(bench, f"client actor peak RSS at {large}", runs[large]["client"], "MiB"),
        Result(bench, "driver peak RSS large/small", runs[large]["driver"] / runs[small]["driver"], target="<= 1.2",
               note=note),
        Result(bench, "client actor peak RSS large/small", runs[large]["client"] / runs[small]["client"],
               target="<= 1.2", note=note),
    ])


if __name__ == "__main__":
    main()
