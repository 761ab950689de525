"""The hub-free model registry and the tiny Qwen2 builder (fast: no vLLM, no SmolLM2 conversion)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.errors import ConfigError
from serve_apps import models
from serve_apps.models import tiny_qwen2
from serve_apps.models.tiny_qwen2 import build_tiny_qwen2


def _hashes(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_qwen2(tmp_path_factory.mktemp("tiny") / "seed0", seed=0)


def test_same_seed_gives_identical_files(tiny_dir, tmp_path):
    again = build_tiny_qwen2(tmp_path / "again", seed=0)
    assert _hashes(again) == _hashes(tiny_dir)
    expected = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    assert expected <= set(_hashes(again))


def test_other_seed_changes_weights_only(tiny_dir, tmp_path):
    other = _hashes(build_tiny_qwen2(tmp_path / "seed1", seed=1))
    base = _hashes(tiny_dir)
    assert other["model.safetensors"] != base["model.safetensors"]
    assert other["tokenizer.json"] == base["tokenizer.json"]


def test_transformers_loads_tokenizer_and_chat_template(tiny_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    assert tokenizer.eos_token == "<|im_end|>"
    for text in ["What is 12 + 34?", "Ünïcödé  spaces\n\nand\ttabs 😀", "zipe lavoo, nim!"]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text
    # Special tokens must stay single ids (an empty added_tokens_decoder would split them into characters).
    assert tokenizer.encode("<|im_start|><|im_end|>", add_special_tokens=False) == [
        tokenizer.convert_tokens_to_ids("<|im_start|>"),
        tokenizer.eos_token_id,
    ]

    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"


def test_tokenizer_ids_match_the_tokenizers_library(tiny_dir):
    # transformers imposes Qwen2's own pre-tokenizer on load; the trained one must be the same.
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    text = "Hello world's 3 apples\r\n  and  'em?"
    raw = Tokenizer.from_file(str(tiny_dir / "tokenizer.json"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    assert tokenizer.encode(text, add_special_tokens=False) == raw.encode(text).ids


def test_transformers_loads_model(tiny_dir):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    # vLLM's CPU attention supports head_dim 32 but not 16.
    assert model.config.hidden_size // model.config.num_attention_heads == 32
    logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, tiny_qwen2.VOCAB_SIZE)


def test_model_path_unknown_name_lists_known_names():
    with pytest.raises(ConfigError, match="unknown model 'gpt-9'.*smollm2-135m-instruct, tiny-qwen2"):
        models.model_path("gpt-9")


def test_model_path_not_prepared_says_how_to_prepare(tmp_path, monkeypatch):
    monkeypatch.setenv("EVALCLUSTER_HOME", str(tmp_path))
    assert not models.is_prepared("tiny-qwen2")
    with pytest.raises(ConfigError, match="evalcluster models prepare tiny-qwen2"):
        models.model_path("tiny-qwen2")


def test_prepare_builds_once(tmp_path, monkeypatch):
    monkeypatch.setenv("EVALCLUSTER_HOME", str(tmp_path))
    path = models.prepare("tiny-qwen2")
    assert path == tmp_path / "models" / "tiny-qwen2"
    assert models.model_path("tiny-qwen2") == path
    built_at = (path / "model.safetensors").stat().st_mtime_ns
    assert models.prepare("tiny-qwen2") == path
    assert (path / "model.safetensors").stat().st_mtime_ns == built_at
    # No temporary build directories left beside it.
    assert [p.name for p in path.parent.iterdir()] == ["tiny-qwen2"]


def test_failed_build_leaves_nothing_prepared(tmp_path, monkeypatch):
    monkeypatch.setenv("EVALCLUSTER_HOME", str(tmp_path))

    def half_build(out_dir, seed=0):
        (Path(out_dir) / "config.json").write_text("{}")
        raise RuntimeError("interrupted")

    monkeypatch.setattr(tiny_qwen2, "build_tiny_qwen2", half_build)
    with pytest.raises(RuntimeError, match="interrupted"):
        models.prepare("tiny-qwen2")
    assert not models.is_prepared("tiny-qwen2")
    assert list((tmp_path / "models").iterdir()) == []


def test_importing_the_registry_does_not_import_torch():
    code = "import sys, serve_apps.models; assert not {'torch', 'transformers'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(models.__file__).parents[2])
