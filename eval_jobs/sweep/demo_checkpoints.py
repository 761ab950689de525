"""A synthetic training trajectory for the demo sweep, derived locally from the shipped SmolLM2.

    python -m eval_jobs.sweep.demo_checkpoints        # → <evalcluster home>/demo-sweep/checkpoints/step_*

Each "checkpoint" is SmolLM2 with one fixed random perturbation of every weight matrix, scaled down as the step
grows, so the last step is SmolLM2 itself: scores rise along the steps the way a real run's might. It is NOT a
training run, and the demo sweep's report says so. One step is written as a MindSpore `.ckpt` with MindFormers
parameter names, so the demo also goes through conversion (when MindSpore is installed).
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from cluster.paths import evalcluster_home
from eval_jobs.sweep.convert import BASE_SKIP, mindformers_name

log = logging.getLogger(__name__)

# step → perturbation, as a fraction of each weight tensor's own standard deviation.
TRAJECTORY = {0: 0.3, 100: 0.12, 200: 0.05, 300: 0.0}
CKPT_STEP = 100  # written as a MindSpore .ckpt with MindFormers names
SEED = 0


def demo_dir() -> Path:
    return evalcluster_home() / "demo-sweep" / "checkpoints"


def write_trajectory(base: Path, out: Path, trajectory: dict[int, float] = TRAJECTORY) -> list[Path]:
    """Write one checkpoint per step into `out`; returns their paths (already written ones are kept)."""
    import torch
    from safetensors.torch import load_file, save_file

    weights = {k: v.float() for f in sorted(base.glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    generator = torch.Generator().manual_seed(SEED)
    direction = {k: torch.randn(v.shape, generator=generator) * v.std() if v.ndim == 2 else None
                 for k, v in sorted(weights.items())}
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for step, scale in sorted(trajectory.items()):
        tensors = {k: (v + scale * direction[k] if direction[k] is not None else v).contiguous()
                   for k, v in weights.items()}
        if step == CKPT_STEP and _has_mindspore():
            written.append(_write_ckpt(tensors, out / f"step_{step}.ckpt"))
            continue
        target = out / f"step_{step}"
        if not (target / "config.json").exists():
            staging = out / f".step_{step}.tmp"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
            for item in base.iterdir():
                if item.is_file() and not BASE_SKIP.search(item.name):
                    shutil.copy2(item, staging / item.name)
            staging.rename(target)
        written.append(target)
    return written


def _has_mindspore() -> bool:
    import importlib.util

    return importlib.util.find_spec("mindspore") is not None


def _write_ckpt(tensors: dict, path: Path) -> Path:
    """A MindSpore checkpoint as MindFormers saves a Llama: its parameter names, float32 tensors."""
    if path.exists():
        return path
    import mindspore as ms

    params = [{"name": mindformers_name(k), "data": ms.Tensor(v.numpy())} for k, v in tensors.items()]
    tmp = path.with_name(f".tmp-{path.name}")  # save_checkpoint adds ".ckpt" to a name without it
    ms.save_checkpoint(params, str(tmp))
    tmp.rename(path)
    return path


def main(argv: list[str] | None = None) -> int:
    from serve_apps import models

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="default: <evalcluster home>/demo-sweep/checkpoints")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    for path in write_trajectory(models.prepare("smollm2-135m-instruct"), args.out or demo_dir()):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
