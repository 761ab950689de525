"""Benchmark 4: how close a sweep comes to ideal packing of checkpoints onto the NPUs.

16 checkpoints of mixed tensor-parallel sizes (4 × tp8, 4 × tp4, 8 × tp2: 64 NPUs' worth) on a simulated cluster
of 4 nodes × 8 NPUs, each node a host of its own (a network namespace: cluster.simulate), served by the
simulated-latency engine, so each checkpoint's evaluation takes a time known in
advance: T = ⌈samples / in-flight⌉ × (TTFT + (tokens − 1) × TPOT). All checkpoints take the same T, so no schedule
can beat T × (the fewest groups that each fit on the cluster at once) — here 2 (64 NPUs on 32). Two ratios of the
sweep's makespan (first deploy to last retire): over ideal packing of what each checkpoint really held (its NPUs
from deploy to retire, measured; the target), which isolates the scheduler; and over the engine-bound ideal,
which also charges engine start-up and this 2-core machine's contention (informational).

    python -m bench.sweep_packing [--quick]
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import DATASET, QUICK, Result, report
from cluster.simulate import simulated_cluster
from eval_jobs.store import SampleStore
from eval_jobs.sweep.scheduler import peak_devices

NODES, NPUS = 4, 8
# In step order; first fit with backfill packs these into two full waves when durations are equal.
TP_SIZES = [8, 4, 2, 2] * 4
# Few, slow tokens and few requests in flight: 8 checkpoints at once stream through one Serve proxy and ingress on
# 2 cores, which must stay far from their limit for the evaluation time to be the engines'.
TTFT_S, TPOT_S, TOKENS = 0.05, 0.15, 8
CONCURRENCY = 4
REPEATS = 1 if QUICK else 2  # × 50 demo rows = samples per checkpoint


def ideal_waves(sizes: list[int]) -> int:
    """Fewest groups, each packable (first fit decreasing) onto the nodes at once; equal to the lower bound
    ⌈Σ tp / total NPUs⌉ for this mix (asserted)."""
    remaining, waves = sorted(sizes, reverse=True), 0
    while remaining:
        free, left = [NPUS] * NODES, []
        for size in remaining:
            node = next((i for i, f in enumerate(free) if f >= size), None)
            if node is None:
                left.append(size)
            else:
                free[node] -= size
        remaining, waves = left, waves + 1
    assert waves == math.ceil(sum(sizes) / (NODES * NPUS))
    return waves


def main() -> None:
    bench = "sweep_packing"
    samples = 50 * REPEATS
    per_checkpoint_s = math.ceil(samples / CONCURRENCY) * (TTFT_S + (TOKENS - 1) * TPOT_S)
    ideal_s = ideal_waves(TP_SIZES) * per_checkpoint_s
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        root = Path(tmp)
        sources = []
        for i, tp in enumerate(TP_SIZES):
            ckpt = root / "ckpts" / f"step_{(i + 1) * 100}"
            ckpt.mkdir(parents=True)
            (ckpt / "config.json").write_text("{}")
            (ckpt / "model.safetensors").write_bytes(b"\0")  # the simulator reads no weights
            sources.append({"path": str(ckpt), "tensor_parallel_size": tp})
        # The sweep runs as its own driver process, as under `ray job submit`: a driver must set Ray's loopback
        # environment before it imports Ray, which this process (it imported Ray to build the cluster) cannot redo.
        with simulated_cluster(nodes=NODES, npus_per_node=NPUS, cpus_per_node=2, head_cpus=2, connect=False) as sim:
            config = root / "sweep.yaml"
            config.write_text(yaml.safe_dump({
                "cluster": sim.cluster_section(),
                "serve": {"port": 0, "engine": {"kind": "sim", "platform": "ascend", "cpus_per_replica": 0,
                                                "sim": {"ttft_s": TTFT_S, "tpot_s": TPOT_S,
                                                        "output_tokens": TOKENS},
                                                "startup_timeout_s": 300}},
                "eval": {"datasets": [DATASET], "num_repeats": REPEATS, "clients": 1, "concurrency": CONCURRENCY,
                         "generation": {"max_out_len": TOKENS}, "timeout_s": 120, "output": str(root / "sweep")},
                "sweep": {"checkpoints": sources},
            }))
            t0 = time.perf_counter()
            driver = subprocess.run([sys.executable, "-m", "eval_jobs.sweep", str(config)],
                                    env={**os.environ, **sim.state.client_env()},
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
            wall = time.perf_counter() - t0
        if driver.returncode:
            raise RuntimeError(f"sweep exited {driver.returncode}:\n{driver.stderr[-3000:]}")
        events = [json.loads(line) for line in (root / "sweep" / "events.jsonl").read_text().splitlines()]
        records = SampleStore(root / "sweep" / "samples.jsonl").load()
    failed = sum(r.status != "ok" for r in records)
    latency = sum(r.latency_s or 0 for r in records) / len(records)
    print(f"mean request latency {latency:.3f} s (simulator: {TTFT_S + (TOKENS - 1) * TPOT_S:.3f} s), "
          f"tokens {sum(r.completion_tokens or 0 for r in records) / len(records):.1f}")
    deployed = {e["checkpoint"]: e for e in events if e["event"] == "deploy"}
    retired = {e["checkpoint"]: e["t"] for e in events if e["event"] == "retired"}
    makespan = max(retired.values()) - min(e["t"] for e in deployed.values())
    # Each checkpoint holds its NPUs from deploy to retire (engine start and shutdown included): no schedule can
    # finish before the cluster has served all those NPU-seconds, nor before the longest one alone.
    held = {name: retired[name] - e["t"] for name, e in deployed.items()}
    packing_bound = max(sum(deployed[n]["devices"] * h for n, h in held.items()) / (NODES * NPUS), max(held.values()))
    peak = peak_devices(events)
    note = f"{len(TP_SIZES)} checkpoints tp {sorted(set(TP_SIZES))}, {NODES}x{NPUS} NPUs, {samples} samples each"
    print(f"makespan {makespan:.1f} s, ideal {ideal_s:.1f} s, sweep wall {wall:.1f} s, peak NPUs held {peak:.0f}, "
          f"failed samples {failed}")
    report([
        Result(bench, "makespan", makespan, "s", note=note),
        Result(bench, "engine-bound ideal", ideal_s, "s", note=f"{ideal_waves(TP_SIZES)} waves x {per_checkpoint_s:.1f} s"),
        Result(bench, "peak NPUs held", peak, note=f"of {NODES * NPUS}"),
        Result(bench, "makespan/ideal packing", makespan / packing_bound, target="<= 1.15",
               note=f"ideal: the measured NPU-seconds each checkpoint held, perfectly packed ({packing_bound:.0f} s)"
               + (f", {failed} samples FAILED" if failed else "")),
        Result(bench, "makespan/engine-bound ideal", makespan / ideal_s,
               note="the simulator's own time per checkpoint, 2 waves; on 2 cores, 8 checkpoints at once share them"),
    ])


if __name__ == "__main__":
    main()
