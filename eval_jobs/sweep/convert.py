"""Checkpoint conversion: a MindSpore `.ckpt` or one step of MindRLHF's per-rank shards → an HF safetensors
directory that vLLM (and vllm-mindspore's Native backend) loads.

    out = convert(checkpoint, base=Path("/models/Qwen2.5-7B-Instruct"), cache_dir=Path(".evalcluster/converted"))
    ref = convert_remote(checkpoint, base, cache_dir)       # the same, as a Ray task on one CPU

MindSpore's own APIs do the format work (facts.md): `ms.ckpt_to_safetensors` for a .ckpt,
`ms.unified_safetensors` to merge tensor-parallel shards by their strategy file. Then MindFormers parameter names
become Hugging Face names (Qwen2/Llama family), everything that is not a model weight (optimizer moments, step
counters) is dropped, the header metadata says `pt` (MindSpore writes `ms`, which HF loaders reject), and
config.json, generation_config.json and the tokenizer come from the base directory.

Results are cached by a hash of the source files' contents and the base config, so a sweep that is run again,
or two sweeps over the same run, convert each checkpoint once. The cache must be on storage every node sees.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

from cluster.errors import EvalClusterError
from eval_jobs.sweep.checkpoints import Checkpoint

log = logging.getLogger(__name__)

CONVERTER_VERSION = "1"  # part of the cache key: bump when the output of the same source changes
# Wrappers MindRLHF / MindFormers put around the model's own parameter names.
WRAPPER_PREFIXES = ("policy_model.", "network.", "_backbone.", "backbone.")
MINDFORMERS_TO_HF = [
    (re.compile(r"^model\.tok_embeddings\.embedding_weight$"), r"model.embed_tokens.weight"),
    (re.compile(r"^model\.norm_out\.weight$"), r"model.norm.weight"),
    (re.compile(r"^lm_head\.weight$"), r"lm_head.weight"),
    (re.compile(r"^model\.layers\.(\d+)\.attention\.w([qkvo])\.(weight|bias)$"), r"model.layers.\1.self_attn.\2_proj.\3"),
    (re.compile(r"^model\.layers\.(\d+)\.feed_forward\.w1\.weight$"), r"model.layers.\1.mlp.gate_proj.weight"),
    (re.compile(r"^model\.layers\.(\d+)\.feed_forward\.w2\.weight$"), r"model.layers.\1.mlp.down_proj.weight"),
    (re.compile(r"^model\.layers\.(\d+)\.feed_forward\.w3\.weight$"), r"model.layers.\1.mlp.up_proj.weight"),
    (re.compile(r"^model\.layers\.(\d+)\.attention_norm\.weight$"), r"model.layers.\1.input_layernorm.weight"),
    (re.compile(r"^model\.layers\.(\d+)\.ffn_norm\.weight$"), r"model.layers.\1.post_attention_layernorm.weight"),
]  # fmt: skip
# Weights stay out of the copy of the base directory: the converted ones replace them.
BASE_SKIP = re.compile(r"(\.safetensors|\.bin|\.pt|\.pth|\.ckpt|\.gguf|model\.safetensors\.index\.json)$")


class ConversionError(EvalClusterError):
    """A checkpoint that cannot be turned into an HF directory (names the file and what is wrong)."""


def hf_name(name: str) -> str | None:
    """The HF name of a MindFormers parameter; None for what is not a model weight (optimizer state, counters).

    Raises ConversionError for a model weight no rule knows: silently dropping it would serve a broken model.
    """
    for prefix in WRAPPER_PREFIXES:
        name = name.removeprefix(prefix)
    if not name.startswith(("model.", "lm_head.")):
        return None
    for pattern, replacement in MINDFORMERS_TO_HF:
        if pattern.match(name):
            return pattern.sub(replacement, name)
    raise ConversionError(f"parameter {name!r} has no Hugging Face name (Qwen2/Llama MindFormers layout expected)")


def content_hash(checkpoint: Checkpoint, base: Path) -> str:
    """sha256 over the source files' names and bytes, the base config and the converter version."""
    digest = hashlib.sha256(f"evalcluster-convert-{CONVERTER_VERSION}\n".encode())
    for path in [*checkpoint.files(), base / "config.json"]:
        digest.update(f"{path.name}\n{path.stat().st_size}\n".encode())
        with path.open("rb") as f:
            while chunk := f.read(8 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def convert(checkpoint: Checkpoint, base: Path, cache_dir: Path) -> Path:
    """The converted HF directory of `checkpoint`, from the cache or made now (atomically: a crash leaves no
    half directory behind)."""
    _check_base(base)
    out = cache_dir / f"{checkpoint.name}-{content_hash(checkpoint, base)[:16]}"
    if (out / "config.json").exists():
        log.info("%s: converted before, %s", checkpoint.name, out)
        return out
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = cache_dir / f".{out.name}.{uuid.uuid4().hex[:8]}"
    try:
        convert_to(checkpoint, base, staging)
        try:
            os.rename(staging, out)
        except OSError:
            if not (out / "config.json").exists():  # not a concurrent conversion that finished first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def convert_to(checkpoint: Checkpoint, base: Path, out: Path) -> Path:
    """Convert into `out` (created; must not hold another model) without the cache."""
    _check_base(base)
    import torch
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory(prefix="evalcluster-convert-") as work:
        tensors = _mindspore_tensors(checkpoint, Path(work))
        renamed: dict[str, torch.Tensor] = {}
        for name, tensor in tensors.items():
            target = hf_name(name)
            if target is not None:
                renamed[target] = tensor.contiguous()
        if not renamed:
            raise ConversionError(f"{checkpoint.source}: no model weights found (names: {sorted(tensors)[:5]})")
        dropped = len(tensors) - len(renamed)
        out.mkdir(parents=True, exist_ok=True)
        save_file(renamed, str(out / "model.safetensors"), metadata={"format": "pt"})
    for item in base.iterdir():
        if item.is_file() and not BASE_SKIP.search(item.name):
            shutil.copy2(item, out / item.name)
    log.info("%s: %d tensors → %s (%d non-model entries dropped)", checkpoint.name, len(renamed), out, dropped)
    return out


def _check_base(base: Path) -> None:
    if not (base / "config.json").is_file():
        raise ConversionError(f"sweep.base {base}: not an HF model directory (no config.json)")


def _mindspore_tensors(checkpoint: Checkpoint, work: Path) -> dict:
    """Every tensor of the checkpoint under its MindFormers name, merged to full size, as torch tensors."""
    try:
        import mindspore as ms
    except ImportError:
        raise ConversionError(
            f"{checkpoint.source}: converting {checkpoint.kind} checkpoints needs MindSpore in the project "
            "environment (pip install -e '.[convert]')"
        ) from None
    from safetensors.torch import load_file

    if checkpoint.kind == "ckpt":
        ms.ckpt_to_safetensors(str(checkpoint.source), str(work))
    elif checkpoint.kind == "shards":
        # unified_safetensors wants rank_<r>/ directories holding this step's file only; MindRLHF keeps every
        # step side by side, so link this step's files into a staging tree.
        staged = work / "shards"
        for rank, shard in enumerate(checkpoint.shard_files):
            (staged / f"rank_{rank}").mkdir(parents=True)
            os.symlink(shard.resolve(), staged / f"rank_{rank}" / shard.name)
        merged = work / "merged"
        merged.mkdir()
        ms.unified_safetensors(str(staged), str(checkpoint.strategy), str(merged))
        work = merged
    else:
        raise ConversionError(f"{checkpoint.source}: an HF directory needs no conversion")
    files = sorted(work.glob("*.safetensors"))
    if not files:
        raise ConversionError(f"{checkpoint.source}: MindSpore wrote no safetensors")
    tensors: dict = {}
    for f in files:
        tensors.update(load_file(str(f)))
    return tensors


def _convert_task(checkpoint: Checkpoint, base: Path, cache_dir: Path) -> str:
    logging.basicConfig(level=logging.INFO)
    return str(convert(checkpoint, base, cache_dir))


def convert_remote(checkpoint: Checkpoint, base: Path, cache_dir: Path):
    """`convert` as a Ray task on one CPU; returns its ObjectRef (resolves to the output directory)."""
    import ray

    # max_retries=0: a conversion that failed once (bad names, missing shard) fails the same way again.
    return ray.remote(num_cpus=1, max_retries=0)(_convert_task).remote(checkpoint, base, cache_dir)
