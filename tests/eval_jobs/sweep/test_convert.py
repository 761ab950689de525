"""Conversion: a tiny Qwen2 exported as a MindFormers-named MindSpore `.ckpt` and as 2-rank tensor-parallel shards
with a strategy file (MindRLHF's layout) converts back, with MindSpore's own APIs, into a directory whose tensors
equal the original's and whose greedy float32 answers from vLLM CPU equal the original's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from safetensors import safe_open

from eval_jobs.sweep.checkpoints import from_path, mindrlhf_steps
from eval_jobs.sweep.convert import ConversionError, convert, convert_to, hf_name, mindformers_name, source_identity
from ms_export import NON_MODEL, export_ckpt, export_tp_shards, hf_tensors, mindformers_tensors, write_strategy
from shared import MAX_MODEL_LEN

pytest.importorskip("mindspore")

PROMPTS = ["Count to five.", "What is 2 + 3?", "Name a colour.", "Say hello in French."]


@pytest.fixture(scope="module")
def exported(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("exported")
    ckpt = export_ckpt(tiny_model, root / "mindformers" / "step_40.ckpt")
    export_tp_shards(tiny_model, root / "grpo", root / "strategy" / "merged_strategy.ckpt", step=80)
    return {"ckpt": from_path(ckpt), "shards": mindrlhf_steps(root / "grpo", root / "strategy/merged_strategy.ckpt")[0],
            "cache": root / "cache"}


def test_names_map_both_ways_and_unknown_weights_are_errors() -> None:
    for hf in ("model.embed_tokens.weight", "model.layers.11.self_attn.k_proj.bias", "model.layers.0.mlp.up_proj.weight",
               "model.norm.weight", "model.layers.3.post_attention_layernorm.weight"):
        assert hf_name(mindformers_name(hf)) == hf
    assert hf_name("policy_model.model.layers.2.feed_forward.w2.weight") == "model.layers.2.mlp.down_proj.weight"
    assert hf_name("adam_v.model.norm_out.weight") is None and hf_name("global_step") is None
    with pytest.raises(ConversionError, match="model.layers.0.attention.w_qkv.weight"):
        hf_name("model.layers.0.attention.w_qkv.weight")


@pytest.mark.parametrize("kind", ["ckpt", "shards"])
def test_conversion_restores_every_tensor_exactly(kind: str, exported, tiny_model: Path) -> None:
    out = convert(exported[kind], tiny_model, exported["cache"])
    original, converted = hf_tensors(tiny_model), hf_tensors(out)
    assert sorted(converted) == sorted(original)  # optimizer moments and counters dropped
    assert not set(NON_MODEL) & set(converted)
    for name, tensor in original.items():
        assert converted[name].dtype == tensor.dtype and np.array_equal(converted[name], tensor), name
    with safe_open(str(out / "model.safetensors"), framework="np") as f:
        assert f.metadata() == {"format": "pt"}
    assert (out / "config.json").read_text() == (tiny_model / "config.json").read_text()
    assert (out / "tokenizer.json").exists() and (out / "chat_template.jinja").exists()
    # Cached by content: the same source converts once.
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert convert(exported[kind], tiny_model, exported["cache"]) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp


def test_large_outputs_are_sharded_with_an_index_as_hugging_face_writes_them(exported, tiny_model: Path,
                                                                             tmp_path: Path) -> None:
    original = hf_tensors(tiny_model)
    largest = max(t.nbytes for t in original.values())
    out = convert_to(exported["shards"], tiny_model, tmp_path / "hf", max_shard_bytes=largest)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) >= 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert sorted(p.name for p in out.glob("*.safetensors")) == files and not (out / "model.safetensors").exists()
    assert sorted(index["weight_map"]) == sorted(original)
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in original.values())
    for name in files:  # each shard holds what the index says, within the bound unless one tensor is larger
        with safe_open(str(out / name), framework="np") as f:
            assert f.metadata() == {"format": "pt"}
            assert sorted(f.keys()) == sorted(n for n, file in index["weight_map"].items() if file == name)
            assert sum(f.get_tensor(k).nbytes for k in f.keys()) <= largest or len(f.keys()) == 1
    converted = hf_tensors(out)
    assert all(np.array_equal(converted[n], t) and converted[n].dtype == t.dtype for n, t in original.items())


def test_the_cache_reads_no_source_bytes_for_a_source_it_knows(exported, tiny_model: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "step_40.ckpt"
    shutil.copy2(exported["ckpt"].source, ckpt)
    checkpoint = replace(exported["ckpt"], source=ckpt)
    cache = tmp_path / "cache"
    out = convert(checkpoint, tiny_model, cache)
    record = json.loads((cache / ".identity" / f"{source_identity(checkpoint, tiny_model)}.json").read_text())
    assert out.name.endswith(record["content_hash"][:16])
    # Same size and modification time, other bytes: the identity is unchanged, so the source is not read again
    # (had it been hashed, these zeros would have failed to convert).
    stat = ckpt.stat()
    ckpt.write_bytes(b"\0" * stat.st_size)
    os.utime(ckpt, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert convert(checkpoint, tiny_model, cache) == out
    # Touched: a new identity, so the content is hashed once more; it differs now, and MindSpore refuses it.
    os.utime(ckpt, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with pytest.raises(ConversionError, match="MindSpore could not convert it"):
        convert(checkpoint, tiny_model, cache)


def test_a_wrong_strategy_file_is_named(exported, tiny_model: Path, tmp_path: Path) -> None:
    shards = exported["shards"]
    full = mindformers_tensors(tiny_model)
    # Splits on the wrong dimension: MindSpore merges it silently into wrong shapes; the converter names the tensor.
    swapped = write_strategy(tmp_path / "swapped.ckpt", full, 2, split=lambda name, ndim: 1 if ndim == 2 else None)
    with pytest.raises(ConversionError, match=r"merged to shape .* the base model's is"):
        convert(replace(shards, strategy=swapped), tiny_model, tmp_path / "cache")
    # A strategy for 4 devices over 2 ranks' files: named, with the checkpoint.
    four = write_strategy(tmp_path / "four.ckpt", full, 4)
    with pytest.raises(ConversionError, match=rf"{shards.source}: the strategy file lays .* over 4 devices, but 2 ranks"):
        convert(replace(shards, strategy=four), tiny_model, tmp_path / "cache")


def test_cli_convert_writes_the_out_directory(exported, tiny_model: Path, tmp_path: Path) -> None:
    shards = exported["shards"]
    out = tmp_path / "hf"
    done = subprocess.run([sys.executable, "-m", "evalcluster_cli.main", "convert", str(shards.source),
                           "--strategy", str(shards.strategy), "--base", str(tiny_model), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith(str(out))
    assert sorted(hf_tensors(out)) == sorted(hf_tensors(tiny_model))
    again = subprocess.run([sys.executable, "-m", "evalcluster_cli.main", "convert", str(shards.source),
                            "--strategy", str(shards.strategy), "--base", str(tiny_model), "--out", str(out)],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and f"--out {out}: exists and is not empty" in again.stderr


@pytest.mark.engine
def test_converted_checkpoints_answer_like_the_original_in_vllm(exported, tiny_model, endpoint, auth,
                                                               tmp_path) -> None:
    from serve_apps.config import ModelConfig

    # The merged shards are written sharded with an index, so vLLM loads that layout too.
    largest = max(t.nbytes for t in hf_tensors(tiny_model).values())
    names = {"conv-ckpt": convert(exported["ckpt"], tiny_model, exported["cache"]),
             "conv-shards": convert_to(exported["shards"], tiny_model, tmp_path / "sharded", max_shard_bytes=largest)}
    assert (names["conv-shards"] / "model.safetensors.index.json").exists()
    endpoint.add_models([ModelConfig(model=str(path), served_model_name=name, dtype="float32",
                                     max_model_len=MAX_MODEL_LEN) for name, path in names.items()])
    try:
        with httpx.Client(base_url=endpoint.url, headers=auth, timeout=120) as client:
            def answer(model: str, prompt: str) -> str:
                body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 24,
                        "temperature": 0}
                response = client.post("/v1/chat/completions", json=body)
                assert response.status_code == 200, response.text
                return response.json()["choices"][0]["message"]["content"]

            for prompt in PROMPTS:
                reference = answer("tiny-a", prompt)
                assert reference  # random weights still produce tokens
                assert [answer(name, prompt) for name in names] == [reference, reference], prompt
    finally:
        for name in names:
            endpoint.remove_model(name)
