"""The `eval:` config section, and the job file that puts `cluster:`, `serve:` and `eval:` together.

    cluster: {}                         # embedded local Ray (cluster.config.ClusterConfig)
    serve:                              # optional: deploy these checkpoints for the run (serve_apps.config)
      models: [{model: .evalcluster/models/smollm2-135m-instruct}]
    eval:
      datasets: [demo_arith_gen_0_shot_chat_prompt]
      output: runs/demo
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

from cluster.config import ClusterConfig
from cluster.configfile import StrictModel, load_config
from cluster.secrets import check_secret_file, key_from_file_or_env, read_secret_file
from eval_jobs.model_config import DEFAULT_MODEL_CONFIG, resolve_model_config
from serve_apps.config import ServeConfig


DEFAULT_MAX_OUT_LEN = 512  # AISBench's vllm_api_general_chat, should its config not say


class GenerationConfig(StrictModel):
    """Sampling parameters sent with every request. What is left unset is AISBench's: the run's model config
    (`eval.model_config`, default `vllm_api_general_chat`: `max_out_len` 512, `generation_kwargs` temperature 0.01,
    ignore_eos false), as `ais_bench` sends them, so scores compare 1:1 (a request without a temperature would get
    the model's own default)."""

    FLAT_FLAGS: ClassVar[bool] = True  # `--temperature`, not `--generation-temperature` (evalcluster_cli)

    max_out_len: int | None = Field(
        None, ge=1, description="max_tokens per answer (a dataset's per-row limit wins); None: the model config's "
        "max_out_len (512 in AISBench's vllm_api configs).",
    )
    temperature: float | None = Field(None, ge=0, description="None: the model config's (0.01 in AISBench's vllm_api "
                                       "configs); 0 is greedy.")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None)
    seed: int | None = Field(None, description="Base sampling seed; repeat r of a sample uses seed + r.")
    stream_interval: int | None = Field(
        16, ge=1, description="Tokens per streamed chunk (vLLM's `stream_interval`): the first token comes alone, so "
        "TTFT stays exact, then chunks of this many, so every hop between engine and client carries a fraction of "
        "the messages. None: the engine's own setting (one token per chunk). Engines that don't know it ignore it.",
    )
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Passed to the chat template (vLLM's `chat_template_kwargs`), e.g. "
        "enable_thinking: false for Qwen3-style templates; {}: none sent. Chat model configs only.",
    )
    extra_body: dict[str, Any] = Field(
        default_factory=dict, description="More request fields, passed unchanged (e.g. repetition_penalty)."
    )

    def request_fields(self, repeat: int, row_max_out_len: int | None,
                       model_defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The body fields of one request. `model_defaults` are the AISBench model config's own (`max_tokens` and
        its generation_kwargs); every field set here wins over them."""
        fields: dict[str, Any] = dict(model_defaults or {})
        fields["max_tokens"] = row_max_out_len or self.max_out_len or fields.get("max_tokens") or DEFAULT_MAX_OUT_LEN
        for name in ("temperature", "top_p", "top_k"):
            if (value := getattr(self, name)) is not None:
                fields[name] = value
        if self.seed is not None:
            fields["seed"] = self.seed + repeat
        if self.stream_interval is not None:
            fields["stream_interval"] = self.stream_interval
        if self.chat_template_kwargs:
            fields["chat_template_kwargs"] = dict(self.chat_template_kwargs)
        return {**fields, **self.extra_body}


class JudgeConfig(StrictModel):
    """The model that judges the answers of datasets with an LLM judge (AISBench's `judge_infer_cfg`, e.g.
    aime2025_gen_0_shot_llmjudge): a checkpoint this job's endpoint serves, or a model on another endpoint. Its
    requests are samples too (eval_jobs/llm_judge.py); the prompt and the verdict's parsing are the dataset's."""

    model: str = Field(description="Served model name of the judge: a checkpoint of this job's endpoint (or of "
                       "`serve.models`), or of `endpoint` when that is set.")
    endpoint: str | None = Field(
        None, description="OpenAI-compatible base URL serving the judge, when it is not this job's endpoint; "
        "reached over HTTP. None: the judge is reached as the job's own models are.",
    )
    api_key_file: str | None = Field(None, description="File holding the judge endpoint's key (mode 0600).")
    api_key: SecretStr | None = Field(
        None, validate_default=True, description="Bearer key for the judge's endpoint. Default: the key in "
        "api_key_file, else the evaluated endpoint's key (eval.api_key) when the judge is on it.",
    )
    generation: GenerationConfig = Field(
        default_factory=GenerationConfig, description="Sampling of the judge's requests; what is unset is the "
        "dataset's judge_model config's (aime2025 llmjudge: max_out_len 512, temperature 0.01).",
    )

    _key_file_ok = field_validator("api_key_file")(check_secret_file)

    @field_validator("api_key")
    @classmethod
    def _key_from_file(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        """The file's key if a file is named; no environment fallback (that one is the evaluated endpoint's)."""
        path = info.data.get("api_key_file")
        if value is not None and path:
            raise ValueError("give the key or a key file, not both")
        return SecretStr(read_secret_file(path)) if path else value


class EvalConfig(StrictModel):
    """What to evaluate, against which endpoint, how hard to push it, and where results go."""

    endpoint: str | None = Field(
        None, description="OpenAI-compatible base URL to evaluate (the shared endpoint or any vLLM server). "
        "Leave empty when the job's `serve:` section deploys the checkpoints itself.",
    )
    api_key_file: str | None = Field(
        None, description="File holding the endpoint's key (mode 0600: refused if other users may read it).",
    )
    api_key: SecretStr | None = Field(
        None, validate_default=True, description="Bearer key for the endpoint. Default: the key in api_key_file, "
        "else $EVALCLUSTER_API_KEY, else serve.api_key when the job serves its own checkpoints.",
    )
    transport: Literal["auto", "http", "serve"] = Field(
        "auto", description="How requests reach the engines. auto: checkpoints this cluster serves (the job's own, "
        "or `endpoint` when it is this cluster's endpoint) through Serve handles straight to their engine "
        "supervisors on any host; any other endpoint over HTTP. http: always through the endpoint URL (its "
        "proxy and ingress; a loopback URL keeps every client on the driver's host). serve: handles only.",
    )
    models: list[str] = Field(
        default_factory=list, description="Served model names to evaluate; empty: every model the endpoint lists."
    )
    datasets: list[str] = Field(min_length=1, description="AISBench dataset config names or config file paths.")
    # `model_config` is pydantic's own attribute on every model: the field is `aisbench_model`, written
    # `model_config` in YAML, overrides and dumps (its alias), as `ais_bench --models` calls it a model config.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_by_name=True,
                              validate_by_alias=True, serialize_by_alias=True)

    aisbench_model: str = Field(
        DEFAULT_MODEL_CONFIG, alias="model_config",
        description="AISBench model config, by name as `ais_bench --models` takes it "
        "(vllm_api_general_chat, vllm_api_stream_chat: the chat API; vllm_api_general, vllm_api_general_stream: "
        "the completions API, /v1/completions, for base checkpoints without a chat template) or by path to your "
        "own copy. Its meta_template and class render the requests, its max_out_len and generation_kwargs are "
        "their defaults (`generation` fields win), its pred_postprocessor runs before scoring. Its host, port, "
        "url, api_key and batch_size are not used: eval.endpoint, api_key and concurrency say those.",
    )
    data_dir: str | None = Field(
        None, description="Where dataset files live (AISBench's AIS_BENCH_DATASETS_CACHE); default "
        "$AIS_BENCH_DATASETS_CACHE, else <evalcluster home>/datasets.",
    )
    num_repeats: int | None = Field(None, ge=1, description="Answers per question (n); default: the dataset's n.")
    k: list[int] | None = Field(None, description="k values for pass@k / cons@k; default: powers of 2 up to n.")
    limit: int | None = Field(None, ge=1, description="Only the first LIMIT rows of each dataset (smoke runs).")
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    judge: JudgeConfig | None = Field(
        None, description="The judge of datasets whose answers an LLM judges (AISBench configs with "
        "judge_infer_cfg, e.g. aime2025_gen_0_shot_llmjudge); required when such a dataset is evaluated.",
    )
    clients: int = Field(2, ge=1, description="Client actors sharing the work queue.")
    concurrency: int = Field(16, ge=1, description="Requests each client keeps in flight.")
    lease_size: int = Field(4, ge=1, description="Samples a client takes from the queue at a time.")
    timeout_s: float = Field(
        300.0, gt=0, description="The idle bound: an attempt whose answer sends nothing for this long (after its "
        "first token) ends, and is retried. A stream that keeps producing is never cut, however long it runs.",
    )
    first_token_timeout_s: float = Field(
        1800.0, gt=0, description="Longest wait from sending to the answer's first token (a request queued behind a "
        "full batch, a 32k-token prefill); past it the attempt ends and is retried.",
    )
    max_request_s: float | None = Field(
        None, gt=0, description="Optional cap on one attempt end to end, however steadily it streams; hitting it "
        "fails the sample without a retry (it would be cut at the same length). None: no cap.",
    )
    max_retries: int = Field(
        3, ge=0, description="Retries of a sample on connection errors, 429, 5xx, broken streams and the two "
        "silence bounds; each retry generates the answer from the start.",
    )
    backoff_s: float = Field(1.0, ge=0, description="First retry delay; doubles per attempt, with jitter.")
    output: str = Field("runs/latest", description="Run directory; running again on it resumes.")
    trackers: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["tensorboard"], description="Where each checkpoint's scores and perf figures go "
        "as scalars at its training step (from its name, e.g. step_400): TensorBoard event files always "
        "available; wandb (offline unless WANDB_MODE says otherwise) and mlflow (a file store unless "
        "MLFLOW_TRACKING_URI is set) when installed. [] for none.",
    )
    logdir: str | None = Field(
        None, description="Where the trackers write, e.g. the training run's own TensorBoard directory so eval "
        "curves sit beside its loss; default <output>/tensorboard.",
    )

    @field_validator("aisbench_model")
    @classmethod
    def _model_config_exists(cls, value: str) -> str:
        """A path is made absolute (the job may run elsewhere, e.g. under `ray job submit`); a name must exist."""
        return str(resolve_model_config(value)) if value.endswith(".py") or "/" in value else value

    _key_file_ok = field_validator("api_key_file")(check_secret_file)
    _key_resolved = field_validator("api_key")(key_from_file_or_env)

    @model_validator(mode="after")
    def _ks_within_repeats(self) -> EvalConfig:
        if self.k and self.num_repeats and max(self.k) > self.num_repeats:
            raise ValueError(f"k={max(self.k)} exceeds num_repeats={self.num_repeats}")
        return self


class JobConfig(StrictModel):
    """One evaluation job: where it runs, what it serves (optional), what it evaluates."""

    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    serve: ServeConfig | None = Field(None, description="Checkpoints the job deploys for itself.")
    eval: EvalConfig

    @model_validator(mode="after")
    def _has_an_endpoint(self) -> JobConfig:
        serving = self.serve is not None and bool(self.serve.models)
        if serving == bool(self.eval.endpoint):
            raise ValueError(
                "give exactly one of eval.endpoint (an endpoint that is already up) or serve.models "
                "(checkpoints this job deploys)"
            )
        return self


def load_job_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> JobConfig:
    """Read and validate a job YAML; `overrides` (section → fields, as the CLI flags give them) win over the file."""
    return load_config(JobConfig, path, overrides)
