"""Checkpoint conversion: a MindSpore `.ckpt` or one step of MindRLHF's per-rank shards → an HF safetensors
directory that vLLM (and vllm-mindspore's Native backend) loads.

    out = convert(checkpoint, base=Path("/models/Qwen2.5-7B-Instruct"), cache_dir=Path(".evalcluster/converted"))
    ref = convert_remote(checkpoint, base, cache_dir)       # the same, as a Ray task on one CPU

MindSpore's own APIs read the sources: `ms.ckpt_to_safetensors` for a .ckpt (MindSpore reads a .ckpt whole),
`ms.build_searched_strategy` for the layout of MindRLHF's tensor-parallel shards, whose slices are then placed
tensor by tensor (`tensor_stream.py`; layouts beyond plain tensor parallelism go through `ms.unified_safetensors`).
MindFormers parameter names become Hugging Face names (Qwen2/Llama family), everything that is not a model weight
(optimizer moments, step counters) is dropped, every shape is checked against the base model, and the output is
written as Hugging Face writes it: safetensors shards of at most `max_shard_bytes` with
`model.safetensors.index.json`, header metadata `pt` (MindSpore writes `ms`, which HF loaders reject), and
config.json, generation_config.json and the tokenizer from the base directory. Memory: about one tensor (plus
1/tp of it for a tensor split along another dimension than its first), never the whole model.

MindSpore's merge waits while the machine's memory is more than half used, and resets the CPU affinity of the
process it runs in: one more reason conversion runs as its own Ray task.

Results are cached by the sources' content hash, which is computed once per cheap identity of the files (path,
size, modification time: `cached_content_hash`), so a sweep that is run again reads no source bytes to find its
conversions, and two sweeps over the same run convert each checkpoint once. The cache must be on storage every
node sees.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np

from cluster.errors import EvalClusterError
from eval_jobs.sweep.checkpoints import Checkpoint
from eval_jobs.sweep.tensor_stream import MAX_SHARD_BYTES, Tensor, TensorSource, SlicedTensor, read_header, write_sharded

log = logging.getLogger(__name__)

CONVERTER_VERSION = "1"  # part of the cache key: bump when the output of the same source changes
# Wrappers MindRLHF / MindFormers put around the model's own parameter names.
WRAPPER_PREFIXES = ("policy_model.", "network.", "_backbone.", "backbone.")
# MindFormers name ↔ Hugging Face name (Qwen2/Llama family); {n}: layer number, {p}: weight or bias.
NAME_PAIRS = [
    ("model.tok_embeddings.embedding_weight", "model.embed_tokens.weight"),
    ("model.norm_out.weight", "model.norm.weight"),
    ("lm_head.weight", "lm_head.weight"),
    *((f"model.layers.{{n}}.attention.w{x}.{{p}}", f"model.layers.{{n}}.self_attn.{x}_proj.{{p}}") for x in "qkvo"),
    ("model.layers.{n}.feed_forward.w1.weight", "model.layers.{n}.mlp.gate_proj.weight"),
    ("model.layers.{n}.feed_forward.w2.weight", "model.layers.{n}.mlp.down_proj.weight"),
    ("model.layers.{n}.feed_forward.w3.weight", "model.layers.{n}.mlp.up_proj.weight"),
    ("model.layers.{n}.attention_norm.weight", "model.layers.{n}.input_layernorm.weight"),
    ("model.layers.{n}.ffn_norm.weight", "model.layers.{n}.post_attention_layernorm.weight"),
]


def _pattern(template: str) -> re.Pattern[str]:
    escaped = re.escape(template).replace(r"\{n\}", r"(?P<n>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(f"^{escaped}$")


_TO_HF = [(_pattern(mf), hf) for mf, hf in NAME_PAIRS]
_TO_MF = [(_pattern(hf), mf) for mf, hf in NAME_PAIRS]


def _translate(name: str, rules: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, template in rules:
        if match := pattern.match(name):
            return template.format(**match.groupdict())
    return None


def mindformers_name(hf: str) -> str:
    """The MindFormers name of an HF parameter (for exporting test and demo checkpoints)."""
    name = _translate(hf, _TO_MF)
    if name is None:
        raise ConversionError(f"parameter {hf!r} has no MindFormers name")
    return name


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
    hf = _translate(name, _TO_HF)
    if hf is None:
        raise ConversionError(f"parameter {name!r} has no Hugging Face name (Qwen2/Llama MindFormers layout expected)")
    return hf


def content_hash(checkpoint: Checkpoint, base: Path) -> str:
    """sha256 over the source files' names and bytes, the base config and the converter version."""
    digest = hashlib.sha256(f"evalcluster-convert-{CONVERTER_VERSION}\n".encode())
    for path in [*checkpoint.files(), base / "config.json"]:
        digest.update(f"{path.name}\n{path.stat().st_size}\n".encode())
        with path.open("rb") as f:
            while chunk := f.read(8 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def source_identity(checkpoint: Checkpoint, base: Path) -> str:
    """A cheap key of the sources: every file's absolute path, size and modification time (what make and rsync
    trust), the base config's too, and the converter version. Reads no contents."""
    parts = [f"evalcluster-convert-{CONVERTER_VERSION}"]
    for path in [*checkpoint.files(), base / "config.json"]:
        stat = path.stat()
        parts.append(f"{path.absolute()}\t{stat.st_size}\t{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def cached_content_hash(checkpoint: Checkpoint, base: Path, cache_dir: Path) -> str:
    """The sources' content hash, computed once per identity (`source_identity`) and remembered under
    `cache_dir/.identity/`: a sweep that starts again over the same files reads none of their bytes. A source
    touched or rewritten gets a new identity, hence a new hash (and, if its bytes are the same, the same output)."""
    record = cache_dir / ".identity" / f"{source_identity(checkpoint, base)}.json"
    try:
        return json.loads(record.read_text())["content_hash"]
    except (OSError, ValueError, KeyError):
        pass
    digest = content_hash(checkpoint, base)
    record.parent.mkdir(parents=True, exist_ok=True)
    staging = record.with_suffix(f".{uuid.uuid4().hex[:8]}.tmp")
    staging.write_text(json.dumps({"content_hash": digest, "source": str(checkpoint.source)}))
    os.replace(staging, record)  # atomic: a concurrent sweep reads a whole record or none
    return digest


def convert(checkpoint: Checkpoint, base: Path, cache_dir: Path, max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    """The converted HF directory of `checkpoint`, from the cache or made now (atomically: a crash leaves no
    half directory behind)."""
    _check_base(base)
    out = cache_dir / f"{checkpoint.name}-{cached_content_hash(checkpoint, base, cache_dir)[:16]}"
    if (out / "config.json").exists():
        log.info("%s: converted before, %s", checkpoint.name, out)
        return out
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = cache_dir / f".{out.name}.{uuid.uuid4().hex[:8]}"
    try:
        convert_to(checkpoint, base, staging, max_shard_bytes)
        try:
            os.rename(staging, out)
        except OSError:
            if not (out / "config.json").exists():  # not a concurrent conversion that finished first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def convert_to(checkpoint: Checkpoint, base: Path, out: Path, max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    """Convert into `out` (created; must not hold another model) without the cache, tensor by tensor: sharded
    safetensors with an index once the weights exceed `max_shard_bytes`, as Hugging Face writes them."""
    _check_base(base)
    out.mkdir(parents=True, exist_ok=True)
    # MindSpore's intermediate files go beside the output (same file system, sized for checkpoints), not to /tmp.
    with tempfile.TemporaryDirectory(prefix=".evalcluster-convert-", dir=out.parent) as work:
        tensors = _source_tensors(checkpoint, Path(work))
        renamed = {}
        for name, tensor in tensors.items():
            target = hf_name(name)
            if target is not None:
                renamed[target] = tensor
        if not renamed:
            raise ConversionError(f"{checkpoint.source}: no model weights found (names: {sorted(tensors)[:5]})")
        check_shapes({n: t.shape for n, t in renamed.items()}, base, checkpoint.source)
        write_sharded(out, renamed, max_shard_bytes, metadata={"format": "pt"})
    for item in base.iterdir():
        if item.is_file() and not BASE_SKIP.search(item.name):
            shutil.copy2(item, out / item.name)
    log.info("%s: %d tensors → %s (%d non-model entries dropped)", checkpoint.name, len(renamed), out,
             len(tensors) - len(renamed))
    return out


def _check_base(base: Path) -> None:
    if not (base / "config.json").is_file():
        raise ConversionError(f"sweep.base {base}: not an HF model directory (no config.json)")


def _source_tensors(checkpoint: Checkpoint, work: Path) -> dict[str, Tensor]:
    """Where every tensor of the checkpoint is, under its MindFormers name, full size; nothing is read yet."""
    try:
        import mindspore as ms
    except ImportError:
        raise ConversionError(
            f"{checkpoint.source}: converting {checkpoint.kind} checkpoints needs MindSpore in the project "
            "environment (pip install -e '.[convert]')"
        ) from None
    try:
        if checkpoint.kind == "shards":
            sliced = sliced_tensors(ms, checkpoint)
            if sliced is not None:
                return sliced
        files = _mindspore_convert(ms, checkpoint, work)
    except (ValueError, RuntimeError, TypeError, KeyError, OSError) as exc:  # MindSpore's own checks
        raise ConversionError(f"{checkpoint.source}: MindSpore could not convert it: {exc}") from exc
    if not files:
        raise ConversionError(f"{checkpoint.source}: MindSpore wrote no safetensors")
    tensors: dict[str, Tensor] = {}
    for f in files:
        header, data_start = read_header(f)
        tensors.update({name: TensorSource.of(f, entry, data_start) for name, entry in header.items()})
    return tensors


def sliced_tensors(ms, checkpoint: Checkpoint) -> dict[str, Tensor] | None:
    """The full tensors of MindRLHF's per-rank shards as `SlicedTensor`s, read from the strategy with MindSpore's
    own parser (`ms.build_searched_strategy`); None when a layout is beyond plain tensor parallelism (optimizer
    sharding, pipeline or interleaved fields, uneven splits): MindSpore's own merge handles those, whole-file.

    MindSpore's `unified_safetensors` holds up to 3 GiB of merged output (and whole rank files) in memory at once;
    here each tensor is placed from its slices' byte ranges."""
    layouts = ms.build_searched_strategy(str(checkpoint.strategy))
    files = list(checkpoint.shard_files)
    headers = [read_header(f) for f in files]
    tensors: dict[str, Tensor] = {}
    for name, entry in headers[0][0].items():
        layout = layouts.get(name)
        if layout is None:  # not described by the strategy: every rank holds the same copy; rank 0's is used
            tensors[name] = TensorSource.of(files[0], entry, headers[0][1])
            continue
        if (len(layout.dev_matrix) != 1 or len(layout.tensor_map) != 1 or layout.field or
                layout.opt_weight_shard_size or any(s.dim for s in layout.param_split_shape)):
            return None
        devices = [int(d) for d in layout.dev_matrix[0].dim]
        if math.prod(devices) != len(files):
            raise ConversionError(f"{checkpoint.source}: the strategy file lays {name} out over "
                                  f"{math.prod(devices)} devices, but {len(files)} ranks saved this step "
                                  f"(missing rank{len(files)}…?)")
        tensor_map = [int(m) for m in layout.tensor_map[0].dim]
        axes = [len(devices) - 1 - m if m >= 0 else None for m in tensor_map]  # map counts device axes from the right
        splits = tuple(devices[a] if a is not None else 1 for a in axes)
        slices, positions = [], []
        for rank, (path, (header, data_start)) in enumerate(zip(files, headers)):
            coords = np.unravel_index(rank, devices)
            position = tuple(int(coords[a]) if a is not None else 0 for a in axes)
            if position in positions:
                continue  # a replica of a block another rank holds
            if name not in header:
                raise ConversionError(f"{checkpoint.source}: {path.name} has no {name} (rank {rank})")
            slices.append(TensorSource.of(path, header[name], data_start))
            positions.append(position)
        block = slices[0].shape
        if len(block) != len(splits) or any(s.shape != block for s in slices):
            return None
        tensors[name] = SlicedTensor(tuple(b * n for b, n in zip(block, splits)), slices[0].dtype, splits,
                                     tuple(slices), tuple(positions))
    return tensors


def _mindspore_convert(ms, checkpoint: Checkpoint, work: Path) -> list[Path]:
    """Run MindSpore's conversion into `work`; the safetensors files holding the full tensors. (A .ckpt is one
    protobuf message: MindSpore reads it whole, so its conversion needs memory for the whole file.)"""
    if checkpoint.kind == "ckpt":
        ms.ckpt_to_safetensors(str(checkpoint.source), str(work))  # a file: in-process; a directory would fork
        return sorted(work.glob("*.safetensors"))
    if checkpoint.kind == "shards":
        # unified_safetensors reads rank_<r>/ directories and, when one holds several files, picks by name;
        # MindRLHF keeps every step side by side, so this step's files are linked into a staging tree.
        staged = work / "shards"
        for rank, shard in enumerate(checkpoint.shard_files):
            (staged / f"rank_{rank}").mkdir(parents=True)
            os.symlink(shard.resolve(), staged / f"rank_{rank}" / shard.name)
        merged = work / "merged"
        # max_process_num=1: merge in this process (it forks one process per 3 GiB part otherwise).
        ms.unified_safetensors(str(staged), str(checkpoint.strategy), str(merged), max_process_num=1)
        # The merged parameters are the files param_name_map.json names; hyper_param.safetensors holds rank 0's
        # copy of whatever the strategy does not describe, not full tensors.
        index = json.loads((merged / "param_name_map.json").read_text())["weight_map"]
        return [merged / name for name in sorted(set(index.values()))]
    raise ConversionError(f"{checkpoint.source}: an HF directory needs no conversion")


def check_shapes(shapes: dict[str, tuple[int, ...]], base: Path, source: Path) -> None:
    """Every converted tensor must have the shape the base model's has (when the base ships weights): a wrong
    strategy file merges silently into wrong shapes (docs/platform-notes.md), which vLLM would report far less clearly."""
    from safetensors import safe_open

    expected = {}
    for f in sorted(base.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as handle:
            expected.update({name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()})
    for name, shape in sorted(shapes.items()):
        want = expected.get(name)
        if want is not None and tuple(shape) != want:
            raise ConversionError(f"{source}: {name} merged to shape {tuple(shape)}, the base model's is "
                                  f"{want} (wrong strategy file, or a different model size?)")


def _convert_task(checkpoint: Checkpoint, base: Path, cache_dir: Path) -> str:
    logging.basicConfig(level=logging.INFO)
    return str(convert(checkpoint, base, cache_dir))


def convert_remote(checkpoint: Checkpoint, base: Path, cache_dir: Path):
    """`convert` as a Ray task on one CPU; returns its ObjectRef (resolves to the output directory)."""
    import ray

    # max_retries=0: a conversion that failed once (bad names, missing shard) fails the same way again.
    return ray.remote(num_cpus=1, max_retries=0)(_convert_task).remote(checkpoint, base, cache_dir)
