"""Safetensors read and written one tensor at a time, so converting a checkpoint needs memory for about one tensor,
not the whole model.

    sources = [TensorSource.of(name, header_entry, file) ...]   # where each tensor's bytes are (nothing read yet)
    write_sharded(out_dir, {"model.embed_tokens.weight": src, ...}, max_shard_bytes=5 * 2**30)

The format is simple enough to stream (https://github.com/huggingface/safetensors#format): an 8-byte little-endian
header length, a JSON header giving each tensor's dtype, shape and byte range, then the raw bytes. A tensor stored
whole in one file is copied in fixed-size chunks (no tensor is ever materialised); a tensor assembled from
tensor-parallel slices (`SlicedTensor`) is copied slice by slice when the split is along its first dimension
(the slices are then consecutive byte ranges), and otherwise assembled in one buffer of its size while each slice
is read (1 + 1/tp of the tensor). Files are read with plain reads, never memory-mapped: mapped pages would count
in the process's RSS.

Output follows Hugging Face's layout: one `model.safetensors`, or `model-0000i-of-0000n.safetensors` shards plus
`model.safetensors.index.json` (`metadata.total_size`, `weight_map`) once the tensors exceed `max_shard_bytes`.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

COPY_CHUNK_BYTES = 16 << 20  # the fixed part of the memory bound: one chunk in flight
MAX_SHARD_BYTES = 5 * 10**9  # Hugging Face's default max_shard_size ("5GB")
INDEX_NAME = "model.safetensors.index.json"
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def read_header(path: Path) -> tuple[dict[str, dict], int]:
    """(tensor name → {dtype, shape, data_offsets}, where the data starts) of a safetensors file; the metadata
    entry is left out."""
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return header, 8 + length


@dataclass(frozen=True)
class TensorSource:
    """One tensor stored whole: `nbytes` bytes at `offset` in `path`."""

    path: Path
    offset: int
    nbytes: int
    dtype: str
    shape: tuple[int, ...]

    @classmethod
    def of(cls, path: Path, entry: dict, data_start: int) -> TensorSource:
        start, end = entry["data_offsets"]
        return cls(path, data_start + start, end - start, entry["dtype"], tuple(entry["shape"]))

    def copy_to(self, out) -> None:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            left = self.nbytes
            while left:
                chunk = f.read(min(COPY_CHUNK_BYTES, left))
                if not chunk:
                    raise OSError(f"{self.path}: ends inside a tensor (truncated file?)")
                out.write(chunk)
                left -= len(chunk)

    def read(self) -> np.ndarray:
        """The tensor's bytes as an array of its shape (an unsigned integer view of its dtype: only moved)."""
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = bytearray(self.nbytes)
            if f.readinto(data) != self.nbytes:
                raise OSError(f"{self.path}: ends inside a tensor (truncated file?)")
        return np.frombuffer(data, dtype=f"u{DTYPE_BYTES[self.dtype]}").reshape(self.shape)


@dataclass(frozen=True)
class SlicedTensor:
    """One tensor split over tensor-parallel ranks: `slices[i]` holds the block whose index along each dimension
    is `positions[i]` (block sizes are uniform: the shape divided by the splits)."""

    shape: tuple[int, ...]
    dtype: str
    splits: tuple[int, ...]  # how many blocks along each dimension
    slices: tuple[TensorSource, ...]
    positions: tuple[tuple[int, ...], ...] = field(default=())

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_BYTES[self.dtype]

    def copy_to(self, out) -> None:
        by_position = dict(zip(self.positions, self.slices))
        if all(s == 1 for s in self.splits[1:]):  # split along dim 0 only: the blocks are consecutive bytes
            for i in range(self.splits[0] if self.splits else 1):
                by_position[(i, *([0] * (len(self.shape) - 1)))].copy_to(out)
            return
        full = np.empty(self.shape, dtype=f"u{DTYPE_BYTES[self.dtype]}")
        for position, piece in by_position.items():
            block = piece.read()
            index = tuple(slice(p * b, (p + 1) * b) for p, b in zip(position, block.shape))
            full[index] = block
            del block
        out.write(memoryview(full).cast("B"))


Tensor = TensorSource | SlicedTensor


def shard_plan(tensors: dict[str, Tensor], max_shard_bytes: int) -> list[list[str]]:
    """Names per shard, in name order, each shard at most `max_shard_bytes` unless one tensor alone is larger
    (as Hugging Face's `save_pretrained` splits)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name in sorted(tensors):
        nbytes = tensors[name].nbytes
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def write_sharded(out_dir: Path, tensors: dict[str, Tensor], max_shard_bytes: int = MAX_SHARD_BYTES,
                  metadata: dict[str, str] | None = None) -> list[Path]:
    """Write `tensors` (HF names) into `out_dir` as Hugging Face does; returns the files written."""
    plan = shard_plan(tensors, max_shard_bytes)
    names = (["model.safetensors"] if len(plan) == 1 else
             [f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))])
    written = []
    for file_name, shard in zip(names, plan):
        _write_file(out_dir / file_name, {n: tensors[n] for n in shard}, metadata or {})
        written.append(out_dir / file_name)
    if len(plan) > 1:
        index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
                 "weight_map": {n: file_name for file_name, shard in zip(names, plan) for n in shard}}
        (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return written


def _write_file(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    header: dict[str, dict] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, t in tensors.items():
        header[name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as the reference writer pads it
    with path.open("wb") as out:
        out.write(struct.pack("<Q", len(raw)))
        out.write(raw)
        for t in tensors.values():
            t.copy_to(out)
