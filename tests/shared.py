"""Constants and builders the session fixtures (conftest.py) and the tests share."""

from __future__ import annotations

from pathlib import Path

from serve_apps.config import ModelConfig

API_KEY = "test-key-0123"
MAX_MODEL_LEN = 512
MAX_REQUEST_BYTES = 64 * 1024
# Logical CPUs: engines and clients are I/O-bound or pinned by OMP; 2 real cores are enough for what runs at once.
RAY_CPUS = 8
# A declared NPU resource lets the ascend placement and visible-devices path run here (with the simulator).
RAY_NPUS = 4


def tiny_models(tiny_model: Path, *names: str) -> list[ModelConfig]:
    # float32: greedy answers through the endpoint and straight from the engine must match token for token.
    return [ModelConfig(model=str(tiny_model), served_model_name=name, dtype="float32",
                        max_model_len=MAX_MODEL_LEN) for name in names]
