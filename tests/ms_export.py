"""Writing checkpoints the way MindSpore training does, from an HF model directory, for the conversion tests:
a MindFormers-named `.ckpt`, and MindRLHF's per-rank tensor-parallel shards with their strategy file.

The strategy file is MindSpore's protobuf `ParallelStrategyMap` (mindspore.train.node_strategy_pb2), one layout
per parameter: `dev_matrix` (device arrangement; its product is the device count) and `tensor_map` (for each
tensor dimension, which device axis splits it, counted from the right; -1: not split), as MindSpore writes it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from eval_jobs.sweep.convert import mindformers_name

# Megatron-style tensor parallelism: column-parallel weights split their output dimension (0), row-parallel
# ones their input dimension (1); the vocabulary is split too; norms are replicated.
COLUMN_PARALLEL = ("attention.wq.", "attention.wk.", "attention.wv.", "feed_forward.w1.", "feed_forward.w3.",
                   "tok_embeddings.", "lm_head.")
ROW_PARALLEL = ("attention.wo.", "feed_forward.w2.")
# Entries MindRLHF files carry besides the model: the converter must drop them.
NON_MODEL = {"adam_m.model.norm_out.weight": (64,), "global_step": (1,)}


def hf_tensors(hf_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return {k: v for f in sorted(hf_dir.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def mindformers_tensors(hf_dir: Path) -> dict[str, np.ndarray]:
    tensors = {mindformers_name(k): v for k, v in hf_tensors(hf_dir).items()}
    tensors.update({k: np.zeros(shape, np.float32) for k, shape in NON_MODEL.items()})
    return tensors


def export_ckpt(hf_dir: Path, path: Path) -> Path:
    import mindspore as ms

    path.parent.mkdir(parents=True, exist_ok=True)
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in mindformers_tensors(hf_dir).items()],
                       str(path))
    return path


def split_dim(name: str, ndim: int) -> int | None:
    if any(part in name for part in COLUMN_PARALLEL):
        return 0
    if any(part in name for part in ROW_PARALLEL) and ndim == 2:
        return 1
    return None


def write_strategy(path: Path, tensors: dict[str, np.ndarray], ranks: int,
                   split: Callable[[str, int], int | None] = split_dim) -> Path:
    """The strategy file of `tensors` split over `ranks` devices, dimension `split(name, ndim)` of each."""
    from mindspore.train import node_strategy_pb2

    strategy = node_strategy_pb2.ParallelStrategyMap()
    strategy.current_stage = 1
    op = strategy.parallel_strategy_item.add()  # MindSpore writes one per operator; readers take the stage here
    op.node_name = "Default/MatMul-op0"
    op.parallel_strategys.stage = 0
    op.parallel_strategys.parallel_strategy.add().dim.extend([1])
    for name, tensor in tensors.items():
        dim = split(name, tensor.ndim)
        layout = strategy.parallel_layout_item.add()
        layout.param_name = name
        layouts = layout.parallel_layouts
        layouts.dev_matrix.add().dim.extend([ranks])
        layouts.tensor_map.add().dim.extend([0 if d == dim else -1 for d in range(tensor.ndim)])
        layouts.param_split_shape.add()
        layouts.indices_offset.add()
        layouts.field = 0
        layouts.opt_weight_shard_step = 0
        layouts.opt_weight_shard_size = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(strategy.SerializeToString())
    return path


def export_tp_shards(hf_dir: Path, save_dir: Path, strategy_path: Path, step: int, ranks: int = 2) -> Path:
    """MindRLHF's layout: <save_dir>/train/rank_{r}/policy_model_rank_{r}-1_{step}.safetensors, plus the strategy."""
    import mindspore as ms

    full = mindformers_tensors(hf_dir)
    write_strategy(strategy_path, full, ranks)
    for rank in range(ranks):
        shard = {}
        for name, tensor in full.items():
            dim = split_dim(name, tensor.ndim)
            piece = tensor if dim is None else np.split(tensor, ranks, axis=dim)[rank]
            shard[name] = ms.Parameter(ms.Tensor(np.ascontiguousarray(piece)), name=name)
        rank_dir = save_dir / "train" / f"rank_{rank}"
        rank_dir.mkdir(parents=True, exist_ok=True)
        ms.save_checkpoint(shard, str(rank_dir / f"policy_model_rank_{rank}-1_{step}.safetensors"),
                           format="safetensors")
    return save_dir
