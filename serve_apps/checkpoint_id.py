"""What a checkpoint is, as files: a short hash of its weight and config files' names, sizes and modification times.

    checkpoint_identity("/ckpt/step_400")   # 'dir:/ckpt/step_400:3f1c…' — changes when any weight file is rewritten

A served name says nothing about the weights behind it (a sweep's `step_400` may be retrained, a directory
overwritten in place); evaluation records carry this identity so that a rerun knows which answers still belong
to the checkpoint. Stat only, never a read of the weights: it is computed once per engine start and per sweep
checkpoint, and a 70B checkpoint's hundreds of GB would take minutes to hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

# Files whose change changes the answers: weights, the model's config, the tokenizer and chat template, and the
# generation defaults vLLM applies when a request names no temperature.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".npz")
CONFIG_NAMES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "tokenizer.model", "vocab.json", "merges.txt", "special_tokens_map.json", "chat_template.jinja",
                "chat_template.json", "model.safetensors.index.json")


def identity_files(directory: Path) -> list[Path]:
    """The files of an HF-layout directory that `checkpoint_identity` stats (top level only, as vLLM loads)."""
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name in CONFIG_NAMES))


def files_identity(files: Iterable[Path]) -> str:
    """A short hash of (name, size, mtime in ns) of each file; a missing file counts as such."""
    entries = []
    for path in sorted(files):
        try:
            stat = path.stat()
            entries.append([path.name, stat.st_size, stat.st_mtime_ns])
        except OSError:
            entries.append([path.name, None, None])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def checkpoint_identity(model: str) -> str:
    """`dir:PATH:HASH` for a checkpoint directory (or `file:PATH:HASH` for one file), `hub:ID` for anything else
    (a hub id: its revision is what the engine downloads, which evalcluster cannot see)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return f"dir:{path.resolve()}:{files_identity(identity_files(path))}"
    if path.is_file():
        return f"file:{path.resolve()}:{files_identity([path])}"
    return f"hub:{model}"
