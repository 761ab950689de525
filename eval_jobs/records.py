"""The units of work and of results that flow through an evaluation: keys in, one record per finished sample out."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, Field


class SampleKey(NamedTuple):
    """One request to make: which model answers which dataset row, and which repeat of it (0..n-1)."""

    model: str
    dataset: str
    index: int
    repeat: int


class _SampleParts(BaseModel):
    """What a request and the record of its answer both carry."""

    fingerprint: str | None = Field(
        None, description="What produces this sample's answer (request body, dataset row, checkpoint identity), "
        "hashed: a stored record counts for a rerun only if its fingerprint is the same (eval_jobs/fingerprint.py). "
        "Records written before fingerprints existed have none, and match nothing.",
    )
    parts: list[dict[str, Any]] = Field(
        default_factory=list, description="A sample made of several requests (eval_jobs/ppl.py: one per answer "
        "option; eval_jobs/multiturn.py: one per turn). In a request, each part's {'label', 'body'}, and `body` "
        "holds only what they share, or all of them; in a result, what each part gave (per option its label, "
        "perplexity and prompt tokens; per turn the messages sent, the reply, its tokens and timings), and "
        "`response` is the sample's answer (the chosen label; the reply AISBench scores). Empty: one request, `body`.",
    )


class SampleRequest(_SampleParts):
    """What a client actor needs to send one sample: the key, the endpoint, and the exact request body."""

    key: SampleKey
    endpoint: str = Field(description="Base URL of the OpenAI-compatible server, e.g. http://127.0.0.1:8000")
    body: dict[str, Any] = Field(description="The /v1/chat/completions body (messages, model, sampling params), or "
                                 "the /v1/completions one (prompt instead of messages).")


class SampleResult(_SampleParts):
    """One finished sample as written to the run's store. `status` is final for this attempt."""

    model: str
    dataset: str
    index: int
    repeat: int
    status: Literal["ok", "failed"]
    error: str | None = None
    endpoint: str
    prompt: list[dict[str, Any]] | str = Field(
        description="The chat messages sent (inline data: media cut to their first characters), or the prompt "
        "string of a completions request."
    )
    response: str = ""
    reasoning_content: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reasoning_tokens: int | None = Field(
        None, description="Of completion_tokens, those of the reasoning, as the engine counts them (vLLM with a "
        "reasoning parser: usage.completion_tokens_details.reasoning_tokens); None when it does not say.",
    )
    ttft_s: float | None = Field(None, description="Seconds from sending to the first content token.")
    latency_s: float | None = Field(None, description="Seconds from sending to the end of the response.")
    attempts: int = Field(1, description="HTTP attempts made, retries included.")
    started_at: float = Field(description="Unix time the first attempt was sent.")
    finished_at: float | None = Field(
        None, description="Unix time the last attempt ended (retries and backoff included); for throughput."
    )
    @property
    def key(self) -> SampleKey:
        return SampleKey(self.model, self.dataset, self.index, self.repeat)

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first (None when it can't be known)."""
        if self.ttft_s is None or self.latency_s is None or not self.completion_tokens or self.completion_tokens < 2:
            return None
        return (self.latency_s - self.ttft_s) / (self.completion_tokens - 1)
