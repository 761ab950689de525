"""The `engine.sim:` config section (read with `engine.kind: sim`) and the command that starts a simulator."""

from __future__ import annotations

import sys

from pydantic import Field

from cluster.configfile import StrictModel

MODULE = "sim_engine"
# Context length a simulator reports and enforces when the checkpoint's config sets none.
DEFAULT_MAX_MODEL_LEN = 32768


class SimEngineConfig(StrictModel):
    """How slowly the simulated engine pretends to generate, and how many requests it generates at once."""

    ttft_s: float = Field(
        0.05, ge=0, description="Seconds from a request starting to generate to its first token."
    )
    tpot_s: float = Field(0.01, ge=0, description="Seconds per output token after the first.")
    output_tokens: int | None = Field(
        None, ge=1, description="Cap on output tokens per choice; None: the request's max_tokens."
    )
    max_num_seqs: int | None = Field(
        None, ge=1, description="Batch slots (vLLM's max-num-seqs): requests generating at once, the rest "
        "wait in arrival order; None: unlimited.",
    )
    record_requests: str | None = Field(
        None, description="Test aid: append every generation request body the simulator accepts to this JSONL "
        "file, one line each, as received (tests compare what evalcluster and `ais_bench` send); None: no record.",
    )


def sim_command(sim: SimEngineConfig, served_model_name: str, *, max_model_len: int | None, host: str,
                port: int) -> list[str]:
    """The argv that starts one simulated engine (in the project's interpreter: it needs no engine stack)."""
    argv = [sys.executable, "-m", MODULE, "--served-model-name", served_model_name,
            "--ttft-s", str(sim.ttft_s), "--tpot-s", str(sim.tpot_s)]
    if max_model_len:
        argv += ["--max-model-len", str(max_model_len)]
    if sim.output_tokens:
        argv += ["--output-tokens", str(sim.output_tokens)]
    if sim.max_num_seqs:
        argv += ["--max-num-seqs", str(sim.max_num_seqs)]
    if sim.record_requests:
        argv += ["--record-requests", sim.record_requests]
    return argv + ["--host", host, "--port", str(port)]
