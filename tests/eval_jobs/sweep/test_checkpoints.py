"""Finding checkpoints: classification, step order, MindRLHF steps, configured sources and the watcher's notion of
complete (pure file-system tests; the watcher's clock is injected)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.errors import ConfigError
from eval_jobs.sweep.checkpoints import Watcher, discover, from_path, mindrlhf_steps, step_of
from eval_jobs.sweep.config import SweepConfig, load_sweep_config


def hf_dir(path: Path, *, weights: tuple[str, ...] = ("model.safetensors",)) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    for name in weights:
        (path / name).write_bytes(b"w")
    return path


def test_step_from_common_names() -> None:
    assert [step_of(n) for n in ("step_400", "checkpoint-12", "global_step7", "iter_0000300", "final")] == [
        400, 12, 7, 300, None]


def test_paths_are_classified_and_bad_ones_named(tmp_path: Path) -> None:
    assert from_path(hf_dir(tmp_path / "step_5")).kind == "hf"
    ckpt = tmp_path / "mf" / "qwen_rank_0-1_80.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"x")
    assert (from_path(ckpt).kind, from_path(ckpt.parent).source) == ("ckpt", ckpt)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"empty: not a checkpoint"):
        from_path(tmp_path / "empty")
    with pytest.raises(ConfigError, match=r"missing: checkpoint not found"):
        from_path(tmp_path / "missing")


def test_discover_sorts_by_step_and_applies_overrides(tmp_path: Path) -> None:
    for step in (300, 20, 1000):
        hf_dir(tmp_path / "run" / f"step_{step}")
    cfg = SweepConfig(checkpoints=[{"glob": str(tmp_path / "run/step_*"), "tensor_parallel_size": 4}])
    found = discover(cfg)
    assert [c.name for c in found] == ["step_20", "step_300", "step_1000"]
    assert {c.tensor_parallel_size for c in found} == {4}
    with pytest.raises(ConfigError, match="matches nothing"):
        discover(SweepConfig(checkpoints=[{"glob": str(tmp_path / "nope_*")}]))


def test_mindrlhf_lists_only_steps_every_rank_saved(tmp_path: Path) -> None:
    for rank in (0, 1):
        d = tmp_path / "save" / "train" / f"rank_{rank}"
        d.mkdir(parents=True)
        for step in (100, 200):
            if rank == 1 and step == 200:
                continue  # rank 1 is still writing step 200
            (d / f"policy_model_rank_{rank}-1_{step}.safetensors").write_bytes(b"s")
    strategy = tmp_path / "strategy.ckpt"
    strategy.write_bytes(b"p")
    steps = mindrlhf_steps(tmp_path / "save", strategy)
    assert [(c.name, c.kind, [f.parent.name for f in c.shard_files]) for c in steps] == [
        ("step_100", "shards", ["rank_0", "rank_1"])]


def test_converted_kinds_need_a_base(tmp_path: Path) -> None:
    (tmp_path / "a.ckpt").write_bytes(b"x")
    with pytest.raises(ConfigError, match="sweep.base"):
        discover(SweepConfig(checkpoints=[{"path": str(tmp_path / "a.ckpt")}]))


def test_watcher_waits_for_complete_and_settled_checkpoints(tmp_path: Path) -> None:
    now = [0.0]
    watcher = Watcher(tmp_path, settle_s=30, clock=lambda: now[0])
    assert watcher.poll() == []
    ckpt = hf_dir(tmp_path / "step_10", weights=())
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    (ckpt / "model-00001-of-00002.safetensors").write_bytes(b"1")
    now[0] = 100
    assert watcher.poll() == []  # the index names a shard that is not there yet
    (ckpt / "model-00002-of-00002.safetensors").write_bytes(b"2")
    assert watcher.poll() == []  # complete, but not yet unchanged for settle_s
    now[0] = 120
    (ckpt / "model-00002-of-00002.safetensors").write_bytes(b"22")  # still being written
    assert watcher.poll() == []  # changed: the settle time starts again
    now[0] = 140
    assert watcher.poll() == []
    now[0] = 151
    assert [c.name for c in watcher.poll()] == ["step_10"]
    assert watcher.poll() == []  # reported once


def test_watcher_trusts_a_meta_json_naming_the_step(tmp_path: Path) -> None:
    watcher = Watcher(tmp_path, settle_s=3600, clock=lambda: 0.0)
    ckpt = hf_dir(tmp_path / "step_7")
    assert watcher.poll() == []
    (ckpt / "meta.json").write_text(json.dumps({"last_step": 7}))
    assert [c.name for c in watcher.poll()] == ["step_7"]


def test_sweep_config_errors_name_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text("eval: {datasets: [x]}\nsweep: {checkpoints: [{path: a, glob: b}]}\n")
    with pytest.raises(ConfigError, match=r"sweep.yaml: sweep.checkpoints.0.*exactly one of path, glob"):
        load_sweep_config(path)
    path.write_text("eval: {datasets: [x]}\nsweep: {watch: d, serving: {tensor_parallel_size: 0}}\n")
    with pytest.raises(ConfigError, match=r"sweep.serving.tensor_parallel_size = 0"):
        load_sweep_config(path)
    path.write_text("eval: {datasets: [x]}\nserve: {models: [{model: m}]}\nsweep: {watch: d}\n")
    with pytest.raises(ConfigError, match="serve.models: a sweep deploys its checkpoints itself"):
        load_sweep_config(path)
