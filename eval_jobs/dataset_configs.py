"""Where AISBench dataset configs are and what they ask for, without loading any data: config names and paths
(this repo's `configs/datasets/` first, then AISBench's own), the dataset dicts a config defines, the data file
each expects under the data dir, and `evalcluster datasets --search`. `eval_jobs/datasets.py` loads and renders
what these find.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib.util
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.errors import ConfigError
from cluster.paths import REPO_ROOT, evalcluster_home

CACHE_ENV = "AIS_BENCH_DATASETS_CACHE"
REPO_DATASET_CONFIGS = REPO_ROOT / "configs" / "datasets"
GENERAL_CHAT_MODEL = "models/vllm_api/vllm_api_general_chat.py"


@dataclass(frozen=True)
class DatasetConfigInfo:
    """One dataset dict of a dataset config file, and where its data file is expected."""

    name: str  # config name = file name without .py, as `ais_bench --datasets NAME` takes it
    abbr: str  # the dataset's abbr (its name in reports)
    config_path: Path
    data_path: Path | None  # None when the config has no `path`
    data_exists: bool
    error: str | None = None  # set when the config file itself does not load (abbr is then "")


def default_data_dir() -> Path:
    """`$AIS_BENCH_DATASETS_CACHE` if set (AISBench's own convention), else `<evalcluster home>/datasets`."""
    return Path(os.environ.get(CACHE_ENV) or evalcluster_home() / "datasets")


def shipped_configs_dir() -> Path:
    """AISBench's `benchmark/configs` directory, found without importing ais_bench."""
    spec = importlib.util.find_spec("ais_bench")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("ais_bench is not installed in this environment (pip install ais-bench-benchmark)")
    return Path(next(iter(spec.submodule_search_locations))) / "benchmark" / "configs"


def _config_files() -> list[tuple[str, Path]]:
    """All dataset config files as (name, path): this repo's first, then AISBench's, like `--config-dir`."""
    found: list[tuple[str, Path]] = []
    for root in (REPO_DATASET_CONFIGS, shipped_configs_dir() / "datasets"):
        if root.is_dir():
            found += sorted((p.stem, p) for p in root.rglob("*.py") if p.name != "__init__.py")
    return found


def given_config_file(name_or_path: str | Path, not_found: str) -> Path | None:
    """The file `name_or_path` names if it is a path (ends in .py or has a directory), as AISBench takes config
    arguments; None for a bare name. A path to no file raises ConfigError(`not_found`)."""
    text = str(name_or_path)
    if not (text.endswith(".py") or os.sep in text):
        return None
    path = Path(text).expanduser()
    if not path.is_file():
        raise ConfigError(not_found)
    return path.resolve()


def resolve_config(name_or_path: str | Path) -> Path:
    """The config file for a dataset config name or path; unknown names get close matches suggested."""
    text = str(name_or_path)
    if (path := given_config_file(text, f"{text}: dataset config file not found")) is not None:
        return path
    files = _config_files()
    # AISBench matches names case-insensitively (utils/file/file.py:match_files), first match wins.
    for name, path in files:
        if name.lower() == text.lower():
            return path
    names = sorted({n for n, _ in files})
    # Names that extend what was typed first (`aime2025` → aime2025_gen…), then difflib's nearest ones.
    close = [n for n in names if n.lower().startswith(text.lower())][:5]
    close += [n for n in difflib.get_close_matches(text, names, n=5, cutoff=0.5) if n not in close]
    close = close[:5]
    hint = f"; did you mean: {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"dataset = {text!r}: no such dataset config in {REPO_DATASET_CONFIGS} "
        f"or AISBench's configs/datasets{hint}"
    )


def _dataset_dicts(config_path: Path) -> list[Any]:
    """The dataset dicts a config defines: every top-level `*_datasets` list (as `ais_bench --datasets`)."""
    from mmengine.config import Config

    try:
        cfg = Config.fromfile(str(config_path))
    except Exception as exc:  # mmengine wraps syntax and import errors in many types
        raise ConfigError(f"{config_path}: cannot load dataset config: {exc}") from None
    dicts = [d for key in cfg.keys() if key.endswith("_datasets") for d in cfg[key]]
    if not dicts:
        raise ConfigError(f"{config_path}: defines no variable ending in '_datasets'")
    return dicts


def data_file_of(dcfg: Any) -> str | None:
    """The config's data file as written in it: `data_files` for Hugging Face loaders (FewCLUE's HFDataset and
    friends call `load_dataset(path, data_files=...)`, where `path` names a builder such as "json"), else `path`."""
    data_files = dcfg.get("data_files")
    return data_files if isinstance(data_files, str) else dcfg.get("path")


def expected_data_path(path: str | None, data_dir: Path) -> Path | None:
    """Where AISBench looks for `path` (datasets/utils/datasets.py:get_data_path): absolute as is, else under
    the data dir."""
    if not path:
        return None
    return Path(path) if os.path.isabs(path) else data_dir / path


def find_dataset_configs(pattern: str, data_dir: str | Path | None = None) -> list[DatasetConfigInfo]:
    """Dataset configs whose name contains `pattern` (or matches it as a shell glob; case-insensitive), like
    `ais_bench --search --datasets PATTERN`, with the data file each expects under `data_dir`.

    One entry per dataset dict (a config may define many); helper modules that define no `*_datasets` are
    skipped, and a config that fails to load is listed with its `error` (AISBench ships some, e.g. race_gen).
    """
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    pattern = pattern.lower()
    if not any(c in pattern for c in "*?["):
        pattern = f"*{pattern}*"  # a plain name finds every config containing it, as users search
    infos = []
    for name, path in _config_files():
        if not fnmatch.fnmatch(name.lower(), pattern):
            continue
        try:
            dicts = _dataset_dicts(path)
        except ConfigError as exc:
            if "defines no variable" not in str(exc):
                infos.append(DatasetConfigInfo(name, "", path, None, False, error=str(exc)))
            continue
        for dcfg in dicts:
            data_path = expected_data_path(data_file_of(dcfg), root)
            infos.append(
                DatasetConfigInfo(
                    name=name,
                    abbr=str(dcfg.get("abbr", name)),
                    config_path=path,
                    data_path=data_path,
                    data_exists=data_path is not None and data_path.exists(),
                )
            )
    return infos


def _type_name(obj: Any) -> str:
    """A class or function as AISBench writes it in dumped configs (utils/config/run.py:get_config_type)."""
    if isinstance(obj, str) or obj is None:
        return obj or ""
    return f"{obj.__module__}.{obj.__name__}"


def _plain(obj: Any) -> Any:
    """Config data as plain dicts/lists/scalars; classes and functions become dotted-path strings."""
    if isinstance(obj, dict):
        return {str(key): _plain(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(value) for value in obj]
    if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return _type_name(obj)
    return obj
