"""Session-wide real parts: one local Ray, one endpoint with two real vLLM CPU engines (tiny-qwen2), shared by
every test that needs them, so the session pays each engine start once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.config import ClusterConfig
from cluster.connection import ray_session
from serve_apps import models
from serve_apps.config import EngineConfig, ServeConfig
from shared import API_KEY, MAX_REQUEST_BYTES, RAY_CPUS, RAY_NPUS, tiny_models


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return models.prepare("tiny-qwen2")


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[ClusterConfig]:
    cfg = ClusterConfig(num_cpus=RAY_CPUS, resources={"NPU": RAY_NPUS})
    with ray_session(cfg):
        yield cfg


def engine_python() -> str:
    python = EngineConfig().resolved_python()
    if not Path(python).exists():
        pytest.fail(f"engine environment missing ({python}); build it with `make engine-env`")
    return python


@pytest.fixture(scope="session")
def cpu_engine() -> EngineConfig:
    return EngineConfig(platform="cpu", python=engine_python(), cpus_per_replica=1, omp_num_threads=1,
                        startup_timeout_s=600, health_check_period_s=2, health_timeout_s=5)


@pytest.fixture(scope="session")
def endpoint(ray_cluster, tiny_model, cpu_engine):
    """The shared endpoint: tiny-a and tiny-b (two checkpoints, real vLLM CPU engines), API key required."""
    from serve_apps.endpoint import Endpoint

    cfg = ServeConfig(port=0, api_key=API_KEY, max_request_bytes=MAX_REQUEST_BYTES, engine=cpu_engine,
                      models=tiny_models(tiny_model, "tiny-a", "tiny-b"))
    ep = Endpoint(cfg).start()
    yield ep
    ep.shutdown()


@pytest.fixture
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}

