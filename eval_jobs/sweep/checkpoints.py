"""Finding checkpoints: explicit paths, globs, MindRLHF save directories, and a watched training output directory.

    found = discover(cfg.sweep)                     # every checkpoint the sources name, in step order
    watcher = Watcher(Path("runs/grpo"), settle_s=30)
    watcher.poll()                                  # the checkpoints that became complete since the last poll

A checkpoint is one of three kinds: an HF directory (served as is), a MindSpore `.ckpt` file, or one saved step of
MindRLHF's per-rank shards (both converted first, see `convert`). A training job writes checkpoints while the
sweep watches, so a watched one counts as complete only when its weight files and `config.json` are all present
and unchanged for `settle_s`, or when a `meta.json` beside it names its step (MindRLHF writes it after a save).
"""

from __future__ import annotations

import glob
import json
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from cluster.errors import ConfigError
from eval_jobs.sweep.config import CheckpointSource, SweepConfig
from serve_apps.config import Platform

Kind = Literal["hf", "ckpt", "shards"]
# MindRLHF: <save_dir>/train/rank_{r}/policy_model_rank_{r}-{epoch}_{step}.safetensors (docs/platform-notes.md).
SHARD_FILE = re.compile(r"^policy_model_rank_(\d+)-(\d+)_(\d+)\.safetensors$")
STEP_IN_NAME = re.compile(r"(?:global_step|step|iter|checkpoint|ckpt)[-_]?(\d+)", re.IGNORECASE)
META_STEP_KEYS = ("step", "last_step", "global_step")


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint to evaluate; `name` is the served model name, `source` what the user pointed at."""

    name: str
    kind: Kind
    source: Path
    step: int | None = None
    shard_files: tuple[Path, ...] = ()  # shards: one file per rank, rank order
    strategy: Path | None = None  # shards: the merged strategy file
    tensor_parallel_size: int | None = None
    platform: Platform | None = None

    @property
    def needs_conversion(self) -> bool:
        return self.kind != "hf"

    def files(self) -> list[Path]:
        """The files that make up this checkpoint (what conversion hashes and the watcher waits for)."""
        if self.kind == "shards":
            return [*self.shard_files, *([self.strategy] if self.strategy else [])]
        if self.kind == "ckpt":
            return [self.source]
        return hf_files(self.source)

    def sort_key(self) -> tuple[float, str]:
        return (self.step if self.step is not None else float("inf"), self.name)


def step_of(name: str) -> int | None:
    """The training step a checkpoint's name carries (step_400, checkpoint-400, global_step400), else its last
    number, else None."""
    if match := STEP_IN_NAME.search(name):
        return int(match.group(1))
    numbers = re.findall(r"\d+", name)
    return int(numbers[-1]) if numbers else None


def hf_files(directory: Path) -> list[Path]:
    """config.json and the weights of an HF directory; with an index, every shard it names (present or not)."""
    index = directory / "model.safetensors.index.json"
    if index.exists():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError):
            names = []  # half-written index: the settle time catches it
        weights = [directory / n for n in names] + [index]
    else:
        weights = sorted(directory.glob("*.safetensors"))
    return [directory / "config.json", *weights]


def from_path(path: Path, *, name: str | None = None, step: int | None = None) -> Checkpoint:
    """Classify one path as an HF directory or a MindSpore .ckpt; a clear error for anything else."""
    path = path.absolute()  # engines and conversion tasks run elsewhere, in other working directories
    if path.is_file() and path.suffix == ".ckpt":
        label = name or path.stem
        return Checkpoint(label, "ckpt", path, step if step is not None else step_of(label))
    if path.is_dir():
        label = name or path.name
        step = step if step is not None else step_of(label)
        if (path / "config.json").exists() and (any(path.glob("*.safetensors")) or
                                                 (path / "model.safetensors.index.json").exists()):
            return Checkpoint(label, "hf", path, step)
        ckpts = sorted(path.glob("*.ckpt"))
        if len(ckpts) == 1:
            return Checkpoint(label, "ckpt", ckpts[0], step)
        if len(ckpts) > 1:
            raise ConfigError(f"{path}: holds {len(ckpts)} .ckpt files; name one of them as the checkpoint")
    if not path.exists():
        raise ConfigError(f"{path}: checkpoint not found")
    raise ConfigError(
        f"{path}: not a checkpoint (expected an HF directory with config.json and *.safetensors, or a MindSpore "
        ".ckpt; MindRLHF shards go under `mindrlhf:`)"
    )


def rank_dirs(save_dir: Path) -> list[Path]:
    """The rank_* directories of a MindRLHF save directory (under train/ or directly)."""
    for base in (save_dir / "train", save_dir):
        dirs = sorted((d for d in base.glob("rank_*") if d.is_dir()), key=lambda d: int(d.name[5:] or 0))
        if dirs:
            return dirs
    return []


def mindrlhf_steps(save_dir: Path, strategy: Path) -> list[Checkpoint]:
    """One checkpoint per step saved by every rank (a step some rank has not written yet is not listed)."""
    ranks = rank_dirs(save_dir)
    files: dict[int, dict[int, Path]] = defaultdict(dict)  # step → rank → file
    for rank_dir in ranks:
        for f in rank_dir.glob("policy_model_rank_*.safetensors"):
            if match := SHARD_FILE.match(f.name):
                files[int(match.group(3))][int(match.group(1))] = f
    found = []
    for step, by_rank in sorted(files.items()):
        if len(by_rank) == len(ranks):
            shard_files = tuple(by_rank[r] for r in sorted(by_rank))
            found.append(Checkpoint(f"step_{step}", "shards", save_dir, step, shard_files, strategy))
    return found


def expand(source: CheckpointSource) -> list[Checkpoint]:
    """The checkpoints one configured source names, with its serving overrides."""
    if source.path:
        found = [from_path(Path(source.path).expanduser(), name=source.name, step=source.step)]
    elif source.glob:
        matches = sorted(glob.glob(str(Path(source.glob).expanduser())))
        if not matches:
            raise ConfigError(f"sweep.checkpoints: glob {source.glob!r} matches nothing")
        found = [from_path(Path(m)) for m in matches]
    else:
        save_dir, strategy = Path(source.mindrlhf).expanduser().absolute(), Path(source.strategy).expanduser().absolute()
        if not rank_dirs(save_dir):
            raise ConfigError(f"sweep.checkpoints: mindrlhf {save_dir} has no rank_* directories")
        if not strategy.is_file():
            raise ConfigError(f"sweep.checkpoints: strategy file {strategy} not found")
        found = mindrlhf_steps(save_dir, strategy)
    return [replace(c, tensor_parallel_size=source.tensor_parallel_size, platform=source.platform) for c in found]


def discover(cfg: SweepConfig) -> list[Checkpoint]:
    """Every checkpoint of the configured sources, in step order; two with one served name are an error."""
    found = [c for source in cfg.checkpoints for c in expand(source)]
    check_unique(found)
    if any(c.needs_conversion for c in found) and not cfg.base:
        kinds = sorted({c.kind for c in found if c.needs_conversion})
        raise ConfigError(f"sweep.base: {kinds} checkpoints need a base HF directory for config and tokenizer")
    return sorted(found, key=Checkpoint.sort_key)


def check_unique(checkpoints: Iterable[Checkpoint]) -> None:
    seen: dict[str, Path] = {}
    for c in checkpoints:
        if c.name in seen and seen[c.name] != c.source:
            raise ConfigError(f"sweep.checkpoints: {seen[c.name]} and {c.source} are both named {c.name!r}; "
                              "give one a `name:`")
        seen[c.name] = c.source


# -- watching a training output directory ---------------------------------------------------------------------


def _signature(files: list[Path]) -> tuple | None:
    """(name, size, mtime) of every file; None while any is missing."""
    try:
        return tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    except FileNotFoundError:
        return None


def meta_names_step(checkpoint: Checkpoint) -> bool:
    """True when a meta.json beside the checkpoint's files says its step has been saved."""
    if checkpoint.step is None:
        return False
    dirs = {f.parent for f in checkpoint.files()} if checkpoint.kind != "hf" else {checkpoint.source}
    for directory in dirs:
        try:
            meta = json.loads((directory / "meta.json").read_text())
        except (OSError, ValueError):
            return False
        steps = [meta[k] for k in META_STEP_KEYS if isinstance(meta, dict) and isinstance(meta.get(k), int)]
        if not steps or max(steps) < checkpoint.step:
            return False
    return True


@dataclass
class Watcher:
    """Scans `directory` every poll; reports each checkpoint once, when it is complete."""

    directory: Path
    settle_s: float
    strategy: Path | None = None
    clock: Callable[[], float] = time.monotonic
    _seen: dict[str, tuple[tuple, float]] = field(default_factory=dict)  # name → (signature, since)
    _reported: set[str] = field(default_factory=set)

    def candidates(self) -> list[Checkpoint]:
        if rank_dirs(self.directory):
            if self.strategy is None:
                raise ConfigError(f"sweep.watch: {self.directory} holds MindRLHF shards; give sweep.checkpoints a "
                                  "mindrlhf source with its strategy file")
            return mindrlhf_steps(self.directory, self.strategy)
        found = []
        for child in sorted(self.directory.iterdir()) if self.directory.is_dir() else []:
            if child.name.startswith("."):
                continue
            try:
                found.append(from_path(child))
            except ConfigError:
                continue  # not (yet) a checkpoint: no config.json or weights so far
        return found

    def poll(self) -> list[Checkpoint]:
        """Checkpoints that became complete since the last call."""
        ready = []
        now = self.clock()
        for c in self.candidates():
            if c.name in self._reported:
                continue
            signature = _signature(c.files())
            if signature is None:
                self._seen.pop(c.name, None)
                continue
            previous = self._seen.get(c.name)
            if previous is None or previous[0] != signature:
                self._seen[c.name] = (signature, now)
                previous = self._seen[c.name]
            if meta_names_step(c) or now - previous[1] >= self.settle_s:
                self._reported.add(c.name)
                ready.append(c)
        return sorted(ready, key=Checkpoint.sort_key)

    def mark_known(self, names: Iterable[str]) -> None:
        """Names already handled by configured sources: the watcher never reports them again."""
        self._reported.update(names)
