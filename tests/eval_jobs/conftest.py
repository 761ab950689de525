"""Fixtures for the AISBench dataset/scoring tests: one data dir and one AISBench import per session."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from eval_jobs.dataset_configs import GENERAL_CHAT_MODEL, shipped_configs_dir
from eval_jobs.demo_dataset import write_demo_dataset


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir in AISBench's layout holding the demo dataset."""
    root = tmp_path_factory.mktemp("datasets")
    write_demo_dataset(root)
    return root


@pytest.fixture(scope="session")
def aisbench_messages(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Any], list[list[dict]]]:
    """AISBench's own prompt path for an API chat model, as the reference for evalcluster's rendering.

    This is what OpenICLApiInferTask does: build GenInferencer with the vllm_api_general_chat model config,
    `get_data_list(retriever)`, then the model's `get_request_body(prompt, max_out_len, output)`.
    """
    from ais_bench.benchmark.models.output import RequestOutput
    from ais_bench.benchmark.registry import ICL_INFERENCERS, ICL_RETRIEVERS
    from mmengine.config import Config

    model_cfg = copy.deepcopy(Config.fromfile(str(shipped_configs_dir() / GENERAL_CHAT_MODEL))["models"][0])
    model_cfg["model"] = "reference"  # non-empty: no GET /v1/models at construction
    model_type = model_cfg["type"]
    model_cfg["type"] = f"{model_type.__module__}.{model_type.__name__}"  # the form ais_bench dumps it in
    out_dir = tmp_path_factory.mktemp("aisbench_out")

    def render(built_dataset: Any, dataset_cfg: Any) -> list[list[dict]]:
        infer_cfg = dataset_cfg["infer_cfg"]
        inferencer_cfg = copy.deepcopy(infer_cfg["inferencer"])
        inferencer_cfg.update(model_cfg=model_cfg, batch_size=1, output_json_filepath=str(out_dir))
        inferencer = ICL_INFERENCERS.build(inferencer_cfg)
        retriever_cfg = copy.deepcopy(infer_cfg["retriever"])
        retriever_cfg.update(
            dataset=built_dataset,
            prompt_template=infer_cfg.get("prompt_template"),
            ice_template=infer_cfg.get("ice_template"),
        )
        data_list = inferencer.get_data_list(ICL_RETRIEVERS.build(retriever_cfg))

        async def bodies() -> list[dict]:
            return [
                await inferencer.model.get_request_body(d["prompt"], d["max_out_len"], RequestOutput(False))
                for d in data_list
            ]

        return [body["messages"] for body in asyncio.run(bodies())]

    return render


@pytest.fixture(scope="session")
def aisbench_build() -> Callable[[str, Path], tuple[Any, Any]]:
    """Build a shipped or repo dataset config with AISBench alone: (built dataset, dataset cfg)."""
    import os

    from ais_bench.benchmark.utils.config import build_dataset_from_cfg
    from mmengine.config import Config

    from eval_jobs.dataset_configs import resolve_config

    def build(name: str, data_dir: Path) -> tuple[Any, Any]:
        cfg = Config.fromfile(str(resolve_config(name)))
        dataset_cfg = next(v for k, v in cfg.items() if k.endswith("_datasets"))[0]
        old = os.environ.get("AIS_BENCH_DATASETS_CACHE")
        os.environ["AIS_BENCH_DATASETS_CACHE"] = str(data_dir)
        try:
            return build_dataset_from_cfg(dataset_cfg), dataset_cfg
        finally:
            if old is None:
                os.environ.pop("AIS_BENCH_DATASETS_CACHE")
            else:
                os.environ["AIS_BENCH_DATASETS_CACHE"] = old

    return build
