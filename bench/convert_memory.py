"""`python -m bench.convert_memory [--quick]`: peak RSS of converting a synthetic ~2 GB checkpoint, against its
largest tensor.

The source is MindRLHF's layout (two tensor-parallel ranks, `policy_model_rank_R-1_STEP.safetensors` + a strategy
file), MindFormers names, float32 random data, Qwen2 shapes (hidden 2048, MLP 5632, vocabulary 32000, 7 layers).
It is a safetensors source because MindSpore's `save_checkpoint` takes the whole model in memory (a .ckpt is one
protobuf message); the rank files are written here tensor by tensor, so making them needs no memory either.

The conversion runs in a child process (as the sweep's Ray task would), after its imports: the peak RSS during the
conversion (VmHWM, reset through /proc/self/clear_refs once the imports are done) minus the RSS before it is what
conversion itself needed. Target: at most 1.5 × the largest tensor.
Disk: ~2 GB of source and ~2 GB of output in a temporary directory, deleted at the end (`--quick`: a quarter).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import QUICK, Result, report
from cluster.paths import REPO_ROOT

BENCH = "convert_memory"
HIDDEN, MLP, VOCAB = 2048, 5632, 32000
LAYERS = 2 if QUICK else 7
RANKS = 2
STEP = 100


def mindformers_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {"model.tok_embeddings.embedding_weight": (VOCAB, HIDDEN), "model.norm_out.weight": (HIDDEN,),
              "lm_head.weight": (VOCAB, HIDDEN)}
    for n in range(LAYERS):
        p = f"model.layers.{n}."
        shapes.update({p + f"attention.w{x}.weight": (HIDDEN, HIDDEN) for x in "qkvo"})
        shapes.update({p + "feed_forward.w1.weight": (MLP, HIDDEN), p + "feed_forward.w3.weight": (MLP, HIDDEN),
                       p + "feed_forward.w2.weight": (HIDDEN, MLP), p + "attention_norm.weight": (HIDDEN,),
                       p + "ffn_norm.weight": (HIDDEN,)})
    return shapes


def write_rank_file(path: Path, shapes: dict[str, tuple[int, ...]], split: dict[str, int | None], rank: int) -> None:
    """One rank's safetensors file, header first, then each tensor's slice generated and written alone."""
    header, offset, pieces = {"__metadata__": {"format": "ms"}}, 0, {}
    for name, shape in shapes.items():
        dim = split[name]
        piece = tuple(s // RANKS if d == dim else s for d, s in enumerate(shape))
        nbytes = int(np.prod(piece)) * 4
        header[name] = {"dtype": "F32", "shape": list(piece), "data_offsets": [offset, offset + nbytes]}
        pieces[name] = piece
        offset += nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(rank)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, piece in pieces.items():
            rng.standard_normal(piece, dtype=np.float32).tofile(f)


def make_source(root: Path) -> tuple[Path, Path, Path, int, int]:
    """(save dir, strategy file, base dir, total bytes, largest tensor bytes)."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from ms_export import split_dim, write_strategy  # the tests' MindSpore strategy writer

    shapes = mindformers_shapes()
    split = {name: split_dim(name, len(shape)) for name, shape in shapes.items()}
    strategy = _strategy(root / "strategy.ckpt", shapes, write_strategy)
    for rank in range(RANKS):
        rank_dir = root / "save" / "train" / f"rank_{rank}"
        rank_dir.mkdir(parents=True)
        write_rank_file(rank_dir / f"policy_model_rank_{rank}-1_{STEP}.safetensors", shapes, split, rank)
    base = root / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "qwen2", "hidden_size": HIDDEN,
                                                  "intermediate_size": MLP, "vocab_size": VOCAB,
                                                  "num_hidden_layers": LAYERS}))
    sizes = [int(np.prod(s)) * 4 for s in shapes.values()]
    return root / "save", strategy, base, sum(sizes), max(sizes)


def _strategy(path: Path, shapes: dict[str, tuple[int, ...]], write_strategy) -> Path:
    # write_strategy reads only each tensor's ndim: zero-stride views stand in for the data (no memory).
    views = {n: np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), s, (0,) * len(s)) for n, s in shapes.items()}
    return write_strategy(path, views, RANKS)


CHILD = """
import sys, time
from pathlib import Path
import mindspore, safetensors, numpy
from eval_jobs.sweep.checkpoints import mindrlhf_steps
from eval_jobs.sweep.convert import convert_to

def status(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key + ":"))

before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM: the imports' own transient peak does not count
t0 = time.monotonic()
convert_to(mindrlhf_steps(Path(sys.argv[1]), Path(sys.argv[2]))[0], Path(sys.argv[3]), Path(sys.argv[4]))
print("seconds", time.monotonic() - t0)
print("rss_before_kib", before)
print("peak_kib", status("VmHWM"))
"""


def child(*argv: str) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, check=True,
                          cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    return {k: float(v) for k, v in (line.split() for line in done.stdout.splitlines()
                                     if line.split()[0] in ("seconds", "rss_before_kib", "peak_kib"))}


def main() -> None:
    mib = 2**20
    root = Path(tempfile.mkdtemp(prefix="evalcluster-convert-bench-", dir=REPO_ROOT / ".evalcluster"))
    try:
        t0 = time.monotonic()
        save, strategy, base, total, largest = make_source(root)
        print(f"source: {total / mib:.0f} MiB in {RANKS} rank files ({time.monotonic() - t0:.0f} s); "
              f"largest tensor {largest / mib:.0f} MiB", flush=True)
        run = child(str(save), str(strategy), str(base), str(root / "out"))
        baseline, peak = run["rss_before_kib"] * 1024, run["peak_kib"] * 1024
        out_bytes = sum(f.stat().st_size for f in (root / "out").glob("*.safetensors"))
        disk = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report([
        Result(BENCH, "conversion peak RSS growth / largest tensor", (peak - baseline) / largest,
               target="<= 1.5", note=f"largest tensor {largest / mib:.0f} MiB, source {total / mib:.0f} MiB"),
        Result(BENCH, "conversion peak RSS", peak / mib, "MiB", note=f"{baseline / mib:.0f} MiB after the imports, before converting"),
        Result(BENCH, "conversion time", run["seconds"], "s", note=f"{out_bytes / mib:.0f} MiB written"),
        Result(BENCH, "disk used at peak (deleted after)", disk / mib, "MiB"),
    ])


if __name__ == "__main__":
    main()
