"""The `sweep:` config section, and the sweep job file that puts `cluster:`, `serve:`, `eval:` and `sweep:` together.

    cluster: {}                              # where it runs (cluster.config.ClusterConfig)
    serve: {engine: {platform: ascend}}      # the shared endpoint and engine settings; no models: the sweep adds them
    eval:                                    # datasets and generation settings of an eval config; output = sweep dir
      datasets: [aime2025_gen_0_shot_chat_prompt]
      output: runs/grpo-sweep
    sweep:
      checkpoints:
        - glob: /ckpt/grpo/step_*                          # one checkpoint per match, step from the name
        - path: /ckpt/grpo/final
          tensor_parallel_size: 8
        - mindrlhf: /ckpt/grpo/save                        # MindRLHF per-rank shards, one checkpoint per saved step
          strategy: /ckpt/grpo/strategy/merge_strategy/train_policy_merged_strategy.ckpt
      watch: /ckpt/grpo                                    # optional: keep evaluating new checkpoints as they land
      base: /models/Qwen2.5-7B-Instruct                    # config + tokenizer for converted checkpoints
      serving: {tensor_parallel_size: 4, max_model_len: 32768}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from cluster.config import ClusterConfig
from cluster.configfile import StrictModel, load_config
from cluster.paths import evalcluster_home
from eval_jobs.config import EvalConfig
from serve_apps.config import Platform, ServeConfig, ServingSettings


class CheckpointSource(StrictModel):
    """Where checkpoints come from: exactly one of `path`, `glob`, `mindrlhf`."""

    path: str | None = Field(None, description="One checkpoint: an HF directory, a MindSpore .ckpt file, or a "
                             "directory holding one .ckpt.")
    glob: str | None = Field(None, description="Every match is a checkpoint, e.g. runs/grpo/step_*.")
    mindrlhf: str | None = Field(None, description="A MindRLHF save directory (…/train/rank_*/"
                                 "policy_model_rank_*-EPOCH_STEP.safetensors): one checkpoint per saved step.")
    strategy: str | None = Field(None, description="mindrlhf only: the merged parallel strategy file.")
    name: str | None = Field(None, description="path only: served model name (default: derived from the path).")
    step: int | None = Field(None, ge=0, description="path only: training step (default: read from the name).")
    tensor_parallel_size: int | None = Field(None, ge=1, description="Overrides sweep.serving for these checkpoints.")
    platform: Platform | None = Field(None, description="Overrides serve.engine.platform for these checkpoints.")

    @model_validator(mode="after")
    def _one_kind(self) -> CheckpointSource:
        given = [k for k in ("path", "glob", "mindrlhf") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of path, glob, mindrlhf (got {given or 'none'})")
        if (self.mindrlhf is None) != (self.strategy is None):
            raise ValueError("mindrlhf and strategy go together")
        if (self.name is not None or self.step is not None) and self.path is None:
            raise ValueError("name and step apply to a single path only")
        return self


class SweepConfig(StrictModel):
    """Which checkpoints to evaluate, how to serve and convert them, and how many may run at once."""

    checkpoints: list[CheckpointSource] = Field(default_factory=list, description="Checkpoint sources.")
    watch: str | None = Field(
        None, description="Directory to watch: each new checkpoint in it is evaluated once complete "
        "(a MindRLHF layout under it is watched step by step).",
    )
    settle_s: float = Field(
        30.0, ge=0, description="watch: a checkpoint is complete once its weights and config.json are all present "
        "and unchanged for this long (or a meta.json names its step).",
    )
    poll_s: float = Field(5.0, gt=0, description="watch: how often the directory is scanned.")
    idle_timeout_s: float | None = Field(
        None, gt=0, description="watch: stop after this long with nothing new and nothing running (None: never).",
    )
    base: str | None = Field(
        None, description="HF model directory whose config.json and tokenizer converted checkpoints get "
        "(needed for .ckpt and MindRLHF sources).",
    )
    convert_cache: str | None = Field(
        None, description="Where converted checkpoints are cached by source content hash "
        "(default <evalcluster home>/converted).",
    )
    serving: ServingSettings = Field(
        default_factory=ServingSettings, description="Serving settings of every checkpoint (sources may override "
        "tensor_parallel_size and platform).",
    )
    note: str | None = Field(None, description="A line shown with the report's title, e.g. 'synthetic trajectory'.")
    trackers: list[Literal["tensorboard", "wandb", "mlflow"]] | None = Field(
        None, description="Trackers for the sweep's learning curves (each checkpoint at its training step); "
        "None: eval.trackers (default [tensorboard]).",
    )
    logdir: str | None = Field(
        None, description="Where the trackers write, e.g. the training run's TensorBoard directory, so eval curves "
        "sit beside its loss; None: eval.logdir, else <sweep dir>/tensorboard.",
    )
    max_concurrent: int | None = Field(
        None, ge=1, description="At most this many checkpoints deployed at once (default: as many as fit).",
    )

    @field_validator("base")
    @classmethod
    def _shipped_base(cls, value: str | None) -> str | None:
        from serve_apps import models

        return models.resolve(value) if value else value

    def cache_dir(self) -> Path:
        return Path(self.convert_cache).expanduser() if self.convert_cache else evalcluster_home() / "converted"


class SweepJobConfig(StrictModel):
    """One sweep: where it runs, the endpoint and engines, what each checkpoint is evaluated on, which checkpoints."""

    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    serve: ServeConfig = Field(default_factory=lambda: ServeConfig(port=0))
    eval: EvalConfig
    sweep: SweepConfig

    @model_validator(mode="after")
    def _sweep_owns_the_models(self) -> SweepJobConfig:
        if self.serve.models:
            raise ValueError("serve.models: a sweep deploys its checkpoints itself; list them under sweep.checkpoints")
        if self.eval.endpoint or self.eval.models:
            raise ValueError("eval.endpoint / eval.models: a sweep evaluates its own checkpoints; leave them out")
        if not self.sweep.checkpoints and not self.sweep.watch:
            raise ValueError("sweep: give sweep.checkpoints, sweep.watch, or both")
        return self


def load_sweep_config(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepJobConfig:
    """Read and validate a sweep YAML; `overrides` (section → fields) win over the file."""
    return load_config(SweepJobConfig, path, overrides)
