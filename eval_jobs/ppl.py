"""PPL datasets (AISBench's `PPLInferencer`): a multiple-choice question answered by the log-probabilities of its
option prompts, not by generated text.

    labels, options = render_options(built_dataset, infer_cfg)    # driver: per row, per label, the chat messages
    request = ppl_request(key, endpoint, options[i], labels, fields)
    result = await send_ppl(transports, request, bounds=bounds, max_retries=3, backoff_s=1.0)
    result.response    # "B": the label whose prompt has the lowest perplexity
    result.parts       # per option: label, ppl, prompt tokens, the messages sent

What AISBench does, with its own code where it runs on the driver: the retriever's `generate_label_prompt` renders
each label's template, `VLLMCustomAPIChat.parse_template(mode="ppl")` and `get_ppl_request_body` make its chat
body with `prompt_logprobs: 0` (a vLLM extension: the log-probability of every prompt token; a chat completion
has them at the top level, a completion in `choices[0]`). An option's perplexity is the negative mean of those
log-probabilities over the prompt tokens that have one (`BaseAPIModel._calc_ppl`); the lowest wins, the first in
label order on a tie (`PPLInferencer._calc_prediction`). Those two are re-stated here (`perplexity`, `choose`)
so client actors need not import AISBench (7-12 s); tests/eval_jobs/test_ppl.py checks them against AISBench's
own on the engine's real answers.

Two differences, neither changing a choice: requests are not streamed (AISBench refuses stream mode for PPL
too), and `max_tokens` is 1 where AISBench sends its max_out_len (512): a prompt's log-probabilities do not
depend on what is generated after it, and the generated text is thrown away, so 512 tokens per option would
only cost engine time.

One sample is one question; its option requests are its parts, sent one after another as AISBench sends them,
and stored in the sample's record with their perplexities (so a resumed run reuses the whole question, and a
report shows why an option won). A part that fails after its retries fails the sample, naming the option; the
rerun that retries the question sends only the options it has no answer for yet (`reuse_parts`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from typing import Any

from eval_jobs.client import Bounds, Transports, _backoff, post_whole_answer
from eval_jobs.records import SampleKey, SampleRequest, SampleResult
from eval_jobs.sse import MAX_ERROR_CHARS, AttemptError

INFERENCER = "PPLInferencer"
# Fields of AISBench's PPL body that evalcluster sets itself (see the module docstring on max_tokens).
PPL_FIELDS = {"max_tokens": 1, "prompt_logprobs": 0, "stream": False}
# A prompt's log-probabilities take ~100 bytes a token in vLLM's JSON: 64 MiB is ~600k tokens, beyond any context.
MAX_ANSWER_BYTES = 64 * 1024 * 1024


def is_ppl(infer_cfg: Any) -> bool:
    inferencer = (infer_cfg or {}).get("inferencer", {}).get("type")
    name = inferencer if isinstance(inferencer, str) else getattr(inferencer, "__name__", "")
    return name.rsplit(".", 1)[-1] == INFERENCER


def render_options(dataset: Any, infer_cfg: Any) -> tuple[list[str], list[list[list[dict[str, Any]]]]]:
    """(labels, per row the chat messages of each label's prompt), built as PPLInferencer.get_data_list and
    VLLMCustomAPIChat.get_ppl_request_body build them. Labels are the inferencer's `labels`, else the
    retriever's (the prompt template's keys); they are returned as strings, the form every prediction takes."""
    from ais_bench.benchmark.models.output import RequestOutput

    from eval_jobs.prompts import _run_sync, retriever_for
    from eval_jobs.model_config import load_model_config

    retriever = retriever_for(dataset, infer_cfg)
    labels = infer_cfg["inferencer"].get("labels") or retriever.get_labels()
    model = load_model_config().build()  # vllm_api_general_chat: PPL options go as chat bodies
    ice = [retriever.generate_ice(ice_idx) for ice_idx in retriever.retrieve()]
    prompts = [[model.parse_template(retriever.generate_label_prompt(idx=idx, ice=ice[idx], label=label), mode="ppl")
                for label in labels] for idx in range(len(ice))]

    async def bodies() -> list[list[dict[str, Any]]]:
        return [[await model.get_ppl_request_body(p, 1, RequestOutput(False)) for p in row] for row in prompts]

    rows = _run_sync(bodies())
    for row in rows:
        for body in row:
            if body.get("prompt_logprobs") != PPL_FIELDS["prompt_logprobs"]:  # AISBench changed how it asks
                raise RuntimeError(f"AISBench's PPL request body has prompt_logprobs={body.get('prompt_logprobs')!r}")
    return [str(label) for label in labels], [[body["messages"] for body in row] for row in rows]


def ppl_request(key: SampleKey, endpoint: str, options: Sequence[list[dict[str, Any]]], labels: Sequence[str],
                fields: dict[str, Any]) -> SampleRequest:
    """One question: a part per option, each a chat body (`fields`: model and AISBench's sampling fields; the PPL
    fields are set here). Its `body` holds every option, so its fingerprint covers them all."""
    shared = {**{k: v for k, v in fields.items() if k != "stream_interval"}, **PPL_FIELDS}
    parts = [{"label": label, "body": {**shared, "messages": messages}} for label, messages in zip(labels, options)]
    body = {**shared, "options": [{"label": p["label"], "messages": p["body"]["messages"]} for p in parts]}
    return SampleRequest(key=key, endpoint=endpoint, body=body, parts=parts)


def prompt_logprobs_of(answer: Any) -> list[Any]:
    """vLLM's prompt log-probabilities: a chat completion's top-level `prompt_logprobs`, else a completion's
    `choices[0].prompt_logprobs`. A list with one {token_id: {logprob, ...}} per prompt token (None first)."""
    if not isinstance(answer, dict):
        raise AttemptError(f"answer is {type(answer).__name__}, not a JSON object", retryable=True)
    found = answer.get("prompt_logprobs")
    if found is None:
        choices = answer.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            found = choices[0].get("prompt_logprobs")
    if not isinstance(found, list):
        # A server without vLLM's extension answers 200 and leaves the field out: no retry will change that.
        raise AttemptError("the answer has no prompt_logprobs: the server does not implement vLLM's prompt_logprobs "
                           "extension, which PPL datasets need", retryable=False)
    return found


def perplexity(prompt_logprobs: Sequence[Any]) -> tuple[float, int]:
    """(perplexity as AISBench's BaseAPIModel._calc_ppl computes it, tokens it averaged over): the negative mean
    log-probability of each prompt token's first entry (with prompt_logprobs=0, the prompt token itself)."""
    logprobs = []
    for item in prompt_logprobs:
        if item is None:
            continue  # the first token: nothing before it to predict it from
        try:
            value = float(next(iter(item.values()))["logprob"])
        except (AttributeError, StopIteration, KeyError, TypeError, ValueError):
            raise AttemptError(f"malformed prompt_logprobs entry: {str(item)[:200]!r}", retryable=True) from None
        if math.isnan(value):
            raise AttemptError("prompt_logprobs holds NaN", retryable=True)
        logprobs.append(value)
    if not logprobs:
        raise AttemptError("prompt_logprobs has no token with a log-probability", retryable=False)
    return -sum(logprobs) / len(logprobs), len(logprobs)


def choose(ppls: Sequence[tuple[str, float]]) -> str | None:
    """The label of the lowest perplexity; on a tie the first (PPLInferencer._calc_prediction's strict <)."""
    label, lowest = None, float("inf")
    for candidate, ppl in ppls:
        if ppl < lowest:
            label, lowest = candidate, ppl
    return label


async def send_ppl(
    transports: Transports, request: SampleRequest, *, bounds: Bounds, max_retries: int, backoff_s: float,
) -> SampleResult:
    """Send every option of one question and pick one; return its record, ok or failed (never raise for it).

    Each option is retried as `client.send_chat` retries a chat (connection errors, 429, 5xx, a bad answer,
    no answer within the first-token bound: nothing is streamed, so the whole answer is the first data), up to
    `max_retries` times with backoff; other 4xx and a server without prompt_logprobs are final."""
    started_at = time.time()
    parts: list[dict[str, Any]] = []
    attempts, error = 0, None
    for part in request.parts:
        if part.get("result"):  # answered in an earlier run of the same question (`reuse_parts`)
            parts.append(part["result"])
            continue
        t0 = time.perf_counter()
        done, tries, reason = None, 0, ""
        while True:
            tries += 1
            try:
                done = await _bounded_attempt(transports, request.endpoint, part["body"], bounds)
                break
            except AttemptError as exc:
                reason, retryable, retry_after = str(exc), exc.retryable, exc.retry_after_s
            except Exception as exc:  # an answer no check foresaw: a failed sample, never a dead client
                reason, retryable, retry_after = f"internal error ({type(exc).__name__}): {exc}", False, None
            if not retryable or tries > max_retries:
                reason += f" (gave up after {tries} attempts)" if retryable else " (not retried)"
                break
            await asyncio.sleep(_backoff(tries, backoff_s, retry_after))
        attempts += tries
        entry: dict[str, Any] = {"label": part["label"], "messages": part["body"]["messages"],
                                 "latency_s": time.perf_counter() - t0, "attempts": tries}
        if done is None:
            error = f"option {part['label']!r}: {reason}"[:MAX_ERROR_CHARS]
            parts.append({**entry, "status": "failed", "error": reason[:MAX_ERROR_CHARS]})
            break  # as PPLInferencer: a question with a failed option has no answer
        ppl, tokens, usage = done
        parts.append({**entry, "status": "ok", "ppl": ppl, "logprob_tokens": tokens, **usage})
    key = request.key
    ok = [p for p in parts if p["status"] == "ok"]
    chosen = choose([(p["label"], p["ppl"]) for p in ok]) if error is None else None
    common: dict[str, Any] = dict(
        model=key.model, dataset=key.dataset, index=key.index, repeat=key.repeat, endpoint=request.endpoint,
        prompt=next((p["messages"] for p in parts if p["label"] == chosen), parts[0]["messages"] if parts else []),
        attempts=attempts, started_at=started_at, finished_at=time.time(), fingerprint=request.fingerprint,
        parts=parts, latency_s=sum(p["latency_s"] for p in parts),
        prompt_tokens=_total(ok, "prompt_tokens"), completion_tokens=_total(ok, "completion_tokens"),
    )
    if error is not None:
        return SampleResult(status="failed", error=error, **common)
    return SampleResult(status="ok", response=chosen or "", **common)


def reuse_parts(todo: Sequence[SampleRequest], latest: dict[SampleKey, SampleResult]) -> list[SampleRequest]:
    """`todo` with the options an earlier, failed record of the same question (same fingerprint) got answers for:
    a rerun sends only the options still missing."""
    from eval_jobs.function_calls import is_function_call_request, with_answered_steps

    out = []
    for request in todo:
        record = latest.get(request.key)
        if is_function_call_request(request):  # a BFCL question: its answered steps, replayed (function_calls.py)
            out.append(with_answered_steps(request, record))
            continue
        if not request.parts or record is None or record.status == "ok" or record.fingerprint != request.fingerprint:
            out.append(request)
            continue
        answered = {p["label"]: p for p in record.parts if p.get("status") == "ok"}
        parts = [{**part, "result": answered[part["label"]]} if part["label"] in answered else part
                 for part in request.parts]
        out.append(request.model_copy(update={"parts": parts}))
    return out


def _total(parts: list[dict[str, Any]], field: str) -> int | None:
    values = [p.get(field) for p in parts]
    return sum(values) if values and all(isinstance(v, int) for v in values) else None


async def _bounded_attempt(transports: Transports, endpoint: str, body: dict[str, Any],
                           bounds: Bounds) -> tuple[float, int, dict[str, int]]:
    """One option request. Its whole answer comes at once, after the prefill, so it is bounded by the first-token
    wait (and the total cap, if shorter)."""
    limit, name, retryable = bounds.first_s, "eval.first_token_timeout_s", True
    if bounds.total_s is not None and bounds.total_s < limit:
        limit, name, retryable = bounds.total_s, "eval.max_request_s, the total cap", False
    answer = await post_whole_answer(transports, endpoint, body, limit_s=limit, bound=name,
                                     retryable_on_timeout=retryable, max_bytes=MAX_ANSWER_BYTES)
    ppl, tokens = perplexity(prompt_logprobs_of(answer))
    usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
    counts = {k: usage[k] for k in ("prompt_tokens", "completion_tokens") if isinstance(usage.get(k), int)}
    return ppl, tokens, counts
