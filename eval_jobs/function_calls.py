"""BFCL v3 function calling (AISBench's `BFCLV3FunctionCallInferencer`): a sample is one question answered with
function calls, executed against bfcl_eval's simulated APIs when the question has several turns.

    specs = render_function_calls(built_dataset, infer_cfg, model_config, where)   # driver: per row, its turns
    request = function_call_request(key, endpoint, specs[i], fields)
    result = await send_function_calls(transports, request, bounds=bounds, max_retries=3, backoff_s=1.0,
                                       on_step=report)   # report(partial record) after each step but the last
    result.response    # JSON of what AISBench's BFCLV3OutputHandler stores as the prediction (`tool_calls`)
    result.parts       # per step: the model's message, its calls decoded, what executing them returned

What AISBench does (`icl_bfcl_v3_inferencer.py`), with its own code where it runs on the driver. The model
config's `returns_tool_calls` picks the mode: true (`vllm_api_function_call_chat`) sends the functions as
OpenAI `tools` and reads the answer's `tool_calls` (`BFCLV3FunctionInferencer`); false puts them in the system
prompt (bfcl_eval's `system_prompt_pre_processing_chat_model`) and reads the calls from the text
(`BFCLV3PromptInferencer`). The impl class's `pre_query_processing` and `add_holdout_function` make, on the
driver, each turn's user messages and tools (a turn with held-out functions gets bfcl_eval's "here are more
functions" message, and in FC mode the tools with them from that turn on).
- single turn (every category but multi_turn_*): one request; the prediction is the calls as
  `[{name: arguments}]` (FC; the text when there are none) or the text (prompt mode);
- multi turn: for each turn, its user messages are appended, then steps: send the conversation, decode the
  reply's calls (`convert_to_function_call` / `default_decode_execute_prompting`), stop the turn when there are
  none, else run them with bfcl_eval's `execute_multi_turn_func_call` and append the results (FC: `tool`
  messages by call id; prompt mode: a user message from `format_execution_results_prompting`), at most
  MAXIMUM_STEP_LIMIT + 1 steps a turn (then the question ends, force-quit, as in AISBench). The prediction is
  per turn the list of each step's raw calls. A failed request ends the question, as in AISBench.
The decoding, the message bookkeeping and the role mapping of AISBench's `convert_message_to_prompt_list` +
`VLLMCustomAPIChat.get_request_body` are re-stated here (a few lines each) so client actors import only
bfcl_eval's small modules (0.15 s), not AISBench (7-12 s); tests/eval_jobs/test_function_calls.py checks them
against AISBench's own impl classes, and the predictions against AISBench's own inferencer on the same engine.

Differences from AISBench, none changing what is sent for a question: requests are never streamed (AISBench
refuses stream mode for BFCL too); bfcl_eval keeps each question's API instances in its module globals under a
name made of the model name and the question id, and AISBench uses one model name for the whole run, so repeats
of a question would share (and mutate) one file system: here each attempt at a question has its own name, and
its instances are dropped when it ends. As in AISBench, `long_context` is computed from the id's first word
("multi"), so it is never set.

Durable step by step, as conversations are (eval_jobs/multiturn.py): after each answered step but the last, the
client hands the question so far to the queue (`WorkQueue.progress`). A resumed question replays its stored steps
in order: their calls are executed again (bfcl_eval's APIs are deterministic: the same calls on the same initial
state give the same results, checked), so the state is rebuilt without asking the model again, and only the
steps after them are sent. A stored step whose request no longer matches (other results) ends the reuse there.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from cluster.errors import ConfigError
from eval_jobs.client import Bounds, Transports, _backoff, post_whole_answer
from eval_jobs.records import SampleKey, SampleRequest, SampleResult
from eval_jobs.sse import MAX_ERROR_CHARS, AttemptError

INFERENCER = "BFCLV3FunctionCallInferencer"
SPEC = "function_calls"  # the body field holding a question's spec: what marks a function-call sample
# Row fields AISBench's get_data_list passes on when a row has them (multi-turn questions).
EXTRA_FIELDS = ("involved_classes", "initial_config", "missed_function")
# AISBench's convert_message_to_prompt_list keeps messages of these roles (MESSAGE_ROLE_MAP) and
# VLLMCustomAPIChat.get_request_body maps them back to the same names (ROLE_MAP).
ROLES = ("user", "assistant", "tool", "system")
MAX_ANSWER_BYTES = 16 * 1024 * 1024
# What a step's record keeps of its request's outcome.
STEP_FIELDS = ("status", "error", "prompt_tokens", "completion_tokens", "latency_s", "attempts")


def is_function_call(infer_cfg: Any) -> bool:
    inferencer = (infer_cfg or {}).get("inferencer", {}).get("type")
    name = inferencer if isinstance(inferencer, str) else getattr(inferencer, "__name__", "")
    return name.rsplit(".", 1)[-1] == INFERENCER


def is_function_call_request(request: SampleRequest) -> bool:
    return SPEC in request.body


def render_function_calls(dataset: Any, infer_cfg: Any, model_config: Any, where: str) -> list[dict[str, Any]]:
    """Per row its spec: {"id", "fc", "multi_turn", "turns": [{"messages", "tools"}], "initial_config",
    "involved_classes", "long_context"}, built by AISBench's BFCLV3FunctionInferencer / BFCLV3PromptInferencer
    (`returns_tool_calls` of the model config picks which) as `_inference_single_turn` / `_inference_multi_turn`
    build them. `messages` of a turn are what it appends to the conversation; `tools` what its requests carry
    (None in prompt mode)."""
    from ais_bench.benchmark.openicl.icl_inferencer.icl_bfcl_v3_inferencer import (
        BFCLV3FunctionInferencer,
        BFCLV3PromptInferencer,
    )

    if model_config.api != "chat":
        raise ConfigError(f"{where}: BFCL needs a chat model config (VLLMCustomAPIChat); eval.model_config "
                          f"{model_config.name} speaks the completions API")
    fc = bool(model_config.cfg.get("returns_tool_calls", False))
    impl = BFCLV3FunctionInferencer() if fc else BFCLV3PromptInferencer()
    specs = []
    for row in dataset.test:
        data: dict[str, Any] = {"prompt": row["question"], "function": row["function"], "data_name": row["id"]}
        data.update({k: row[k] for k in EXTRA_FIELDS if k in row and row[k] is not None})
        multi_turn = "multi_turn" in data["data_name"]
        inference_data = impl.pre_query_processing(data)  # parses data["prompt"]; the system prompt in prompt mode
        holdout = json.loads(data.get("missed_function", "{}")) if multi_turn else {}
        turns = []
        for turn, messages in enumerate(data["prompt"] if multi_turn else data["prompt"][:1]):
            if str(turn) in holdout:
                inference_data, messages = impl.add_holdout_function(data, inference_data, holdout[str(turn)])
            turns.append({"messages": copy.deepcopy(list(messages)),
                          "tools": copy.deepcopy(inference_data.get("tools")) if fc else None})
        spec: dict[str, Any] = {"id": data["data_name"], "fc": fc, "multi_turn": multi_turn, "turns": turns}
        if multi_turn:
            spec.update(initial_config=json.loads(data.get("initial_config", "{}")),
                        involved_classes=json.loads(data.get("involved_classes", "[]")),
                        # AISBench: `"long_context" in data_name.split("_")[0]`, i.e. never for "multi_turn_*"
                        long_context="long_context" in data["data_name"].split("_")[0])
        specs.append(spec)
    return specs


def check_modes(model_config: Any, eval_cfg: dict[str, Any], where: str) -> None:
    """The evaluator decodes what the inferencer stored: FC lists of calls when its `is_fc_model` (default True),
    else text. A model config whose mode differs would have every answer scored wrong: refused up front."""
    fc = bool(model_config.cfg.get("returns_tool_calls", False))
    evaluator_fc = bool((eval_cfg.get("evaluator") or {}).get("is_fc_model", True))
    if fc != evaluator_fc:
        raise ConfigError(
            f"{where}: its evaluator decodes {'tool calls' if evaluator_fc else 'calls written as text'} "
            f"(is_fc_model={evaluator_fc}) but eval.model_config {model_config.name} has returns_tool_calls={fc}: "
            + ("use a model config with returns_tool_calls: true, e.g. vllm_api_function_call_chat" if evaluator_fc
               else "use a model config without returns_tool_calls"))


def function_call_request(key: SampleKey, endpoint: str, spec: dict[str, Any],
                          fields: dict[str, Any]) -> SampleRequest:
    """One question: `fields` (model and AISBench's sampling fields) go in every request it sends; never
    streamed. Its `body` holds the whole spec, so its fingerprint covers every turn and tool."""
    shared = {k: v for k, v in fields.items() if k not in ("stream", "stream_interval")}
    return SampleRequest(key=key, endpoint=endpoint, body={**shared, "stream": False, SPEC: spec})


def sent_messages(conversation: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages AISBench sends for its conversation list (convert_message_to_prompt_list, then
    get_request_body): messages without role and content dropped, without role sent as user, of other roles
    dropped; content None where a message has none; every other field kept."""
    out = []
    for item in conversation:
        role, content = item.get("role", ""), item.get("content", "")
        if not role:
            if not content:
                continue
            role = "user"
        elif role not in ROLES:
            continue
        out.append({"content": content, "role": role,
                    **{k: v for k, v in item.items() if k not in ("role", "content")}})
    return out


def calls_of(message: dict[str, Any], fc: bool) -> Any:
    """What AISBench keeps of one answer as the step's (or single turn's) calls: FC `[{name: arguments}]` from
    `tool_calls`, else the text; prompt mode the text."""
    content = message.get("content") or ""
    if not fc:
        return content
    calls = [{c["function"]["name"].strip(): c["function"]["arguments"]} for c in message.get("tool_calls") or []]
    return calls or content


def decode_step(message: dict[str, Any], fc: bool) -> tuple[Any, list[str], list[str]]:
    """(raw calls as stored in the prediction, the calls as bfcl_eval executes them, tool call ids), as
    BFCLV3FunctionInferencer / BFCLV3PromptInferencer.extra_multi_turn_response decode a step."""
    from bfcl_eval.model_handler.utils import convert_to_function_call, default_decode_execute_prompting

    if not fc:
        raw: Any = message.get("content") or ""
        try:
            return raw, default_decode_execute_prompting(raw), []
        except Exception:
            return raw, [], []
    calls = message.get("tool_calls") or []
    raw = [{c["function"]["name"].strip(): c["function"]["arguments"]} for c in calls]
    ids = [c["id"] for c in calls]
    if not raw:
        try:
            raw = json.loads(message.get("content", ""))
        except Exception:
            raw = []
    try:
        return raw, convert_to_function_call(raw), ids
    except Exception:
        return raw, [], ids


def result_messages(fc: bool, results: list[str], decoded: list[str], ids: list[str]) -> list[dict[str, Any]]:
    """What add_execution_results appends after a step's calls ran."""
    if fc:
        return [{"role": "tool", "content": r, "tool_call_id": i} for r, i in zip(results, ids)]
    from bfcl_eval.model_handler.utils import format_execution_results_prompting

    text = format_execution_results_prompting({}, results, {"model_responses_decoded": decoded})
    return [{"role": "user", "content": text}]


async def send_function_calls(
    transports: Transports, request: SampleRequest, *, bounds: Bounds, max_retries: int, backoff_s: float,
    on_step: Callable[[SampleResult], Awaitable[Any]] | None = None,
) -> SampleResult:
    """Answer one question (every request as `send_chat` retries one, not streamed); return its record, ok or
    failed (never raise for it). Steps stored in `request.parts` (`result`) are replayed, not sent."""
    spec = request.body[SPEC]
    fields = {k: v for k, v in request.body.items() if k != SPEC}
    started_at = time.time()
    stored = [p["result"] for p in request.parts if p.get("result")]
    steps: list[dict[str, Any]] = []
    if not spec["multi_turn"]:
        turn = spec["turns"][0]
        body = _body(fields, sent_messages(turn["messages"]), turn["tools"])
        step = await _step(transports, request.endpoint, body, bounds, max_retries, backoff_s, "turn 1 step 0")
        steps.append(step)
        if step["status"] != "ok":
            return _record(request, steps, started_at, body["messages"], error=step["error"])
        return _record(request, steps, started_at, body["messages"], prediction=calls_of(step["message"], spec["fc"]))
    from bfcl_eval.constants.default_prompts import MAXIMUM_STEP_LIMIT
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import is_empty_execute_response

    # bfcl_eval's instances of this attempt live in its module globals under this name (module docstring).
    model_name = f"evalcluster_{uuid.uuid4().hex}"
    conversation: list[dict[str, Any]] = []
    prediction: list[list[Any]] = []
    first_sent: list[dict[str, Any]] | None = None
    error = None
    try:
        for t, turn in enumerate(spec["turns"]):
            conversation.extend(copy.deepcopy(turn["messages"]))
            turn_calls: list[Any] = []
            count = 0
            while True:
                label = f"turn {t + 1} step {count}"
                body = _body(fields, sent_messages(conversation), turn["tools"])
                first_sent = first_sent or body["messages"]
                reuse = stored[len(steps)] if len(steps) < len(stored) else None
                if reuse is not None and reuse.get("label") == label and reuse.get("sent") == _digest(body):
                    step = {**reuse, "reused": True}
                else:
                    stored = stored[:len(steps)]  # the rest no longer follows from what was sent
                    step = await _step(transports, request.endpoint, body, bounds, max_retries, backoff_s, label)
                if step["status"] != "ok":
                    steps.append(step)
                    error = f"{label}: {step['error']}"
                    break
                message = step["message"]
                raw, decoded, ids = decode_step(message, spec["fc"])
                turn_calls.append(raw)
                conversation.append(message)
                if is_empty_execute_response(decoded):  # no calls: the turn is over
                    steps.append({**step, "decoded": decoded})
                    if on_step is not None and not step.get("reused") and t + 1 < len(spec["turns"]):
                        await on_step(_record(request, steps, started_at, first_sent, unfinished=True))
                    break
                results, _ = multi_turn_utils.execute_multi_turn_func_call(
                    decoded, spec["initial_config"], spec["involved_classes"], model_name, spec["id"],
                    long_context=spec["long_context"])
                if step.get("reused") and step.get("execution_results") != results:
                    stored = stored[:len(steps) + 1]  # replay gave other results: its later steps are not reused
                steps.append({**step, "decoded": decoded, "execution_results": results})
                conversation.extend(result_messages(spec["fc"], results, decoded, ids))
                count += 1
                if count > MAXIMUM_STEP_LIMIT:
                    error = "force_quit"  # AISBench: "forced to quit after MAXIMUM_STEP_LIMIT steps", not a failure
                    break
                if on_step is not None and not step.get("reused"):
                    await on_step(_record(request, steps, started_at, first_sent, unfinished=True))
            prediction.append(turn_calls)
            if error is not None:
                break
    finally:
        for name in [n for n in vars(multi_turn_utils) if n.startswith(model_name)]:
            del vars(multi_turn_utils)[name]
    if error is not None and error != "force_quit":
        return _record(request, steps, started_at, first_sent or [], error=error)
    return _record(request, steps, started_at, first_sent or [], prediction=prediction)


def _body(fields: dict[str, Any], messages: list[dict[str, Any]], tools: list | None) -> dict[str, Any]:
    """get_request_body's order of things: tools only when the mode sends them."""
    return {**fields, "messages": messages, **({"tools": tools} if tools else {})}


def _digest(body: dict[str, Any]) -> str:
    """What a stored step was sent with: a replayed step counts only if the request it answered is the same."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


async def _step(transports: Transports, endpoint: str, body: dict[str, Any], bounds: Bounds, max_retries: int,
                backoff_s: float, label: str) -> dict[str, Any]:
    """One request of a question, retried as `client.send_chat` retries (connection errors, 429, 5xx, a bad
    answer, no answer in time); other 4xx are final. Its record: the answer's message, tokens, timing."""
    t0 = time.perf_counter()
    tries, reason = 0, ""
    while True:
        tries += 1
        try:
            answer = await _bounded_attempt(transports, endpoint, body, bounds)
            break
        except AttemptError as exc:
            reason, retryable, retry_after = str(exc), exc.retryable, exc.retry_after_s
        except Exception as exc:  # an answer no check foresaw: a failed sample, never a dead client
            reason, retryable, retry_after = f"internal error ({type(exc).__name__}): {exc}", False, None
        if not retryable or tries > max_retries:
            reason += f" (gave up after {tries} attempts)" if retryable else " (not retried)"
            return {"label": label, "sent": _digest(body), "status": "failed", "error": reason[:MAX_ERROR_CHARS],
                    "latency_s": time.perf_counter() - t0, "attempts": tries}
        await asyncio.sleep(_backoff(tries, backoff_s, retry_after))
    usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
    choice = answer["choices"][0]
    return {"label": label, "sent": _digest(body), "status": "ok", "message": choice["message"],
            "finish_reason": choice.get("finish_reason"),
            **{k: usage[k] for k in ("prompt_tokens", "completion_tokens") if isinstance(usage.get(k), int)},
            "latency_s": time.perf_counter() - t0, "attempts": tries}


async def _bounded_attempt(transports: Transports, endpoint: str, body: dict[str, Any],
                           bounds: Bounds) -> dict[str, Any]:
    """A whole answer comes at once, after the whole generation: its silence is bounded by the first-token wait
    plus the idle bound (or the total cap, if shorter)."""
    limit, name, retryable = bounds.first_s + bounds.idle_s, "eval.first_token_timeout_s + eval.timeout_s", True
    if bounds.total_s is not None and bounds.total_s < limit:
        limit, name, retryable = bounds.total_s, "eval.max_request_s, the total cap", False
    answer = await post_whole_answer(transports, endpoint, body, limit_s=limit, bound=name,
                                     retryable_on_timeout=retryable, max_bytes=MAX_ANSWER_BYTES)
    try:
        message = answer["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        raise AttemptError(f"answer has no choices[0].message: {json.dumps(answer)[:200]!r}",
                           retryable=True) from None
    if not isinstance(message, dict):
        raise AttemptError(f"choices[0].message is {type(message).__name__}, not an object", retryable=True)
    return answer


def _record(request: SampleRequest, steps: list[dict[str, Any]], started_at: float, prompt: list[dict[str, Any]],
            *, prediction: Any = None, error: str | None = None, unfinished: bool = False) -> SampleResult:
    key = request.key
    ok = [s for s in steps if s.get("status") == "ok"]
    if unfinished:
        error = (f"question unfinished: {len(ok)} steps answered (the rest were being sent when this was "
                 "recorded)")
    last = ok[-1] if ok else {}
    common: dict[str, Any] = dict(
        model=key.model, dataset=key.dataset, index=key.index, repeat=key.repeat, endpoint=request.endpoint,
        prompt=prompt, attempts=sum(s.get("attempts", 0) for s in steps) or 1, started_at=started_at,
        finished_at=time.time(), fingerprint=request.fingerprint,
        parts=[{k: v for k, v in s.items() if k != "reused"} for s in steps],
        latency_s=sum(s.get("latency_s") or 0.0 for s in steps if not s.get("reused")),
        prompt_tokens=_total(ok, "prompt_tokens"), completion_tokens=_total(ok, "completion_tokens"),
        finish_reason=last.get("finish_reason"),
    )
    if error is not None:
        return SampleResult(status="failed", error=error[:MAX_ERROR_CHARS], **common)
    return SampleResult(status="ok", response=json.dumps(prediction, ensure_ascii=False), **common)


def with_answered_steps(request: SampleRequest, record: SampleResult | None) -> SampleRequest:
    """`request` with the answered steps of an earlier, unfinished or failed record of the same question (same
    fingerprint), which `send_function_calls` replays instead of sending."""
    if record is None or record.status == "ok" or record.fingerprint != request.fingerprint:
        return request
    answered = [{"label": s["label"], "result": s} for s in record.parts if s.get("status") == "ok"]
    return request.model_copy(update={"parts": answered}) if answered else request


# What a failed request is scored as on an irrelevance question (see prediction_of).
FAILED_REQUEST_CALL = [{"evalcluster_failed_request": "{}"}]


def prediction_of(response: str, row_id: str) -> Any:
    """The stored response as the evaluator's prediction (what BFCLV3OutputHandler stores). An ok answer is
    always JSON; "" is a failed request (scoring.judge_frame), which evalcluster counts as wrong everywhere.
    AISBench stores `[]` for it, which every BFCL evaluator judges wrong except on an irrelevance question, where
    "no call" is the right answer: there it is scored as a call instead, so that the evaluator's own accuracy
    and the per-sample verdicts agree (AISBench would count the failed request as a correct refusal)."""
    if response:
        return json.loads(response)
    return copy.deepcopy(FAILED_REQUEST_CALL) if "irrelevance" in row_id else []


def _total(parts: list[dict[str, Any]], field: str) -> int | None:
    values = [p.get(field) for p in parts if not p.get("reused")]
    return sum(values) if values and all(isinstance(v, int) for v in values) else None
