"""A tiny random-weight Qwen2 chat model for fast tests: built in seconds, ~1 MB, no hub.

Its answers are gibberish, but it has everything a real checkpoint has (config, safetensors, BPE tokenizer,
ChatML chat template, generation config), so vLLM serves it like any Qwen2 model.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from serve_apps.models import add_legacy_config_keys

VOCAB_SIZE = 2048
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# ChatML as Qwen uses it, without Qwen's default system prompt (prompts stay short for max-model-len 512).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# transformers 5 re-imposes exactly this pre-tokenizer (and an NFC normalizer) on every `qwen2` tokenizer it
# loads (models/qwen2/tokenization_qwen2.py): training with anything else gives different ids per library.
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
    r"""|\s+(?!\S)|\s+"""
)

_COMMON_WORDS = (
    "the a of and to in is it you that he was for on are with as I his they be at one have this from or "
    "had by word but what some we can out other were all there when up use your how said an each she which "
    "do their time if will way about many then them write would like so these her long make thing see him "
    "two has look more day could go come did number sound no most people my over know water than call first "
    "who may down side been now find answer question sum plus minus equals please think step final user "
    "assistant system hello thanks sure yes help model"
).split()


def build_tiny_qwen2(out_dir: Path, seed: int = 0) -> Path:
    """Write a tiny random Qwen2 chat model into `out_dir`; the same seed gives byte-identical files.

    The tokenizer does not depend on the seed, only the weights do.
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer()
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}

    config = Qwen2Config(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        # head_dim 32: vLLM's CPU attention rejects 16 and below.
        num_key_value_heads=1,
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True,
        # With the usual 0.02 the random model only ever emits newlines; 0.3 gives varied tokens.
        initializer_range=0.3,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        dtype="float32",
    )
    # fork_rng: seed the weights without changing the caller's global torch RNG.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
    )
    model.save_pretrained(out_dir, safe_serialization=True)

    tokenizer.save(str(out_dir / "tokenizer.json"))
    _write_json(out_dir / "tokenizer_config.json", _tokenizer_config(ids))
    (out_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    add_legacy_config_keys(out_dir)
    return out_dir


def _train_tokenizer():
    """Byte-level BPE with Qwen2's normalizer and pre-tokenizer, trained on `_corpus()`."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        # All 256 byte symbols, so any text encodes without an unknown token.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    return tokenizer


def _corpus(lines: int = 6000) -> list[str]:
    """A fixed synthetic text: English words, syllable pseudo-words, arithmetic, ChatML-ish turns.

    Pseudo-words give BPE enough distinct pairs to fill the vocabulary; a private RNG keeps it deterministic.
    """
    rng = random.Random(20240601)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]
    pseudo = ["".join(rng.choices(syllables, k=rng.randint(2, 4))) for _ in range(3000)]
    corpus = []
    for i in range(lines):
        n_words = rng.randint(4, 14)
        words = [rng.choice(_COMMON_WORDS if rng.random() < 0.6 else pseudo) for _ in range(n_words)]
        sentence = " ".join(words).capitalize() + rng.choice(".?!,;:")
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        role = ("user", "assistant", "system")[i % 3]
        corpus.append(f"{role}\n{sentence} What is {a} + {b}? {a} + {b} = {a + b}.\n")
    return corpus


def _tokenizer_config(ids: dict[str, int]) -> dict:
    # added_tokens_decoder must list the special tokens: written empty, transformers splits them into
    # characters. tokenizer_class and chat_template are here too for transformers 4.x stacks.
    return {
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(ids[token]): {
                "content": token,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for token in SPECIAL_TOKENS
        },
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 2048,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
