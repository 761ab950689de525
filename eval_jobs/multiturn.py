"""Multi-turn datasets (AISBench's `MultiTurnGenInferencer`: mtbench, sharegpt): a sample is a whole conversation.

    conversations = render_conversations(built_dataset, infer_cfg, model_config)  # driver: each row's turns
    request = conversation_request(key, endpoint, conversations[i], fields)
    result = await send_conversation(transports, request, bounds=bounds, max_retries=3, backoff_s=1.0,
                                     on_turn=report)      # report(partial record) after each turn but the last
    result.parts       # per turn: the messages sent, the reply, its tokens and timings
    result.response    # what AISBench scores: the first turn's reply (see below)

What AISBench does (`icl_multiturn_inferencer.py`), with its own code where it runs on the driver: the retriever
and `MultiTurnPromptTemplate` make a row's dialogue (HUMAN question, BOT answer, per turn); for the turn whose BOT
answer is at index i, `parse_template(left + chat[:i] + right, mode="gen")` and `get_request_body` make the chat
messages. The mode (`inferencer.infer_mode`) says what earlier BOT turns hold:
- `every` (the default): one request per turn, the model's reply to each turn (`output.content`, without its
  reasoning) taking that BOT turn's place in the next request;
- `every_with_gt`: one request per turn, earlier BOT turns holding the dataset's answers (ground truth);
- `last`: one request, the last turn's, earlier BOT turns holding the dataset's answers. (AISBench 3.1's
  `infer_last` never sends it: `left_prompt + PromptList(...)` recurses without end in `PromptList.__radd__` and
  raises RecursionError. evalcluster sends what it means to, which is `every_with_gt`'s last request.)
Turn t asks for `max_out_len[t]` tokens when the row's `max_out_len` is a list (`last`: its last entry), else
the row's number, else the run's. (AISBench's `every` loop rebinds its `max_out_len` variable on the first turn,
so it sends `max_out_len[0]` on every later turn; evalcluster sends each turn its own, which is what the list
means. No shipped loader makes such a list: the difference shows only with a dataset that sets one per turn.)
A turn that fails ends the conversation, as in AISBench.

Replies are fed back on the client actors, which do not import AISBench (7-12 s): the driver renders each turn with
a placeholder in each earlier BOT turn, checks that AISBench's template carries every placeholder through verbatim,
exactly once (and that the dataset's answers put in their place give AISBench's own rendering of them), and the
client puts the replies in the placeholders' places. Only chat model configs: a completions one renders no message
per turn, and drops empty turns from its prompt string, which a reply put in place cannot reproduce.

The response scored is what AISBench's evaluator gets for the conversation: `OpenICLEvalTask` keeps one prediction
record per row, the first in its file, and the first turn's is written first, so it scores the first turn's reply
(`last`: the one reply). MTBenchEvaluator and ShareGPTEvaluator compare it with the row's list of answers, so
their accuracy is 0 whatever the model says (AISBench's README: "accuracy evaluation not supported"); the
conversation itself, turn by turn, is in the record's `parts`.

Durable turn by turn, with the queue and store as they are: after each answered turn but the last, the client hands
the conversation so far to the queue (`WorkQueue.progress`, before it sends the next turn). The queue keeps it in
the sample's request, so a lease given back (the client died, or stopped renewing) resumes where it stopped, and
hands it to the driver, which appends it to the store as a failed record (`conversation unfinished: 1 of 2 turns
answered`) before the sample's final record; a run that dies mid-conversation leaves that record as the latest,
and the rerun retries the conversation, reusing its answered turns (`ppl.reuse_parts`, by turn label) and sending
only the rest. A replica that dies mid-turn costs only that turn's attempt: `client.send_chat` retries it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Awaitable, Callable
from typing import Any

from cluster.errors import ConfigError
from eval_jobs.client import Bounds, Transports, send_chat
from eval_jobs.records import SampleKey, SampleRequest, SampleResult
from eval_jobs.sse import MAX_ERROR_CHARS

INFERENCER = "MultiTurnGenInferencer"
MODES = ("every", "last", "every_with_gt")
DEFAULT_MODE = "every"  # MultiTurnGenInferencer's own default
# Stands for the model's reply to turn t in the turns after it (mode `every`). NUL never occurs in dataset text.
REPLY = "\x00evalcluster:reply-of-turn-{}\x00"
# What a turn's record keeps from its SampleResult.
TURN_FIELDS = ("status", "error", "response", "reasoning_content", "finish_reason", "prompt_tokens",
               "completion_tokens", "reasoning_tokens", "ttft_s", "latency_s", "attempts")


def is_multiturn(infer_cfg: Any) -> bool:
    inferencer = (infer_cfg or {}).get("inferencer", {}).get("type")
    name = inferencer if isinstance(inferencer, str) else getattr(inferencer, "__name__", "")
    return name.rsplit(".", 1)[-1] == INFERENCER


def is_conversation(request: SampleRequest) -> bool:
    return "turns" in request.body and bool(request.parts)


def infer_mode(infer_cfg: Any, where: str) -> str:
    mode = infer_cfg["inferencer"].get("infer_mode", DEFAULT_MODE)
    if mode not in MODES:
        raise ConfigError(f"{where}: infer_cfg.inferencer.infer_mode = {mode!r}: MultiTurnGenInferencer supports "
                          f"{', '.join(MODES)}")
    return mode


def render_conversations(dataset: Any, infer_cfg: Any, model_config: Any, where: str) -> list[dict[str, Any]]:
    """Per row {"infer_mode", "turns": [{"turn", "messages", "max_out_len"}]}: each request of its conversation
    (`turn`: which of the conversation's turns it asks, from 0), built as
    MultiTurnGenInferencer.get_data_list and its infer_* loop build them (`every`: REPLY placeholders where the
    model's earlier replies go). `max_out_len` is the row's for that turn, None for the run's."""
    from ais_bench.benchmark.models.output import RequestOutput
    from ais_bench.benchmark.utils.prompt import PromptList, get_round_index

    from eval_jobs.prompts import _run_sync, retriever_for

    if model_config.api != "chat":
        raise ConfigError(f"{where}: a multi-turn dataset needs a chat model config (VLLMCustomAPIChat); "
                          f"eval.model_config {model_config.name} speaks the completions API")
    mode = infer_mode(infer_cfg, where)
    retriever = retriever_for(dataset, infer_cfg)
    replace_token = infer_cfg["inferencer"].get("gen_field_replace_token", "") or ""
    model = model_config.build()
    limits = retriever.dataset_reader.get_max_out_len()
    histories: list[list[tuple[Any, Any]]] = []  # per row, per turn: (as sent, with the dataset's answers)
    answers: list[list[str]] = []  # per row, the dataset's answer in each BOT turn
    for idx, ice_idx in enumerate(retriever.retrieve()):
        dialog = retriever.generate_prompt_for_generate_task(idx, retriever.generate_ice(ice_idx),
                                                             gen_field_replace_token=replace_token)
        left_idx, right_idx = get_round_index(dialog)
        left, chat, right = dialog[:left_idx], dialog[left_idx:right_idx], dialog[right_idx:]
        bots = [i for i, item in enumerate(chat) if item["role"] == "BOT"]
        if not bots:
            raise ConfigError(f"{where}: row {idx + 1} has no BOT turn: nothing to ask")
        placed = copy.deepcopy(chat)
        if mode == "every":
            for turn, i in enumerate(bots):
                placed[i]["prompt"] = REPLY.format(turn)
        asked = bots[-1:] if mode == "last" else bots
        histories.append([(model.parse_template(PromptList(left + placed[:i] + right), mode="gen"),
                           model.parse_template(PromptList(left + chat[:i] + right), mode="gen")) for i in asked])
        answers.append([str(chat[i]["prompt"]) for i in bots])

    async def messages() -> list[list[tuple[list, list]]]:
        # get_request_body maps roles (HUMAN -> user) and prompt -> content; max_out_len only has to be > 0.
        return [[((await model.get_request_body(sent, 1, RequestOutput(False)))["messages"],
                  (await model.get_request_body(truth, 1, RequestOutput(False)))["messages"]) for sent, truth in row]
                for row in histories]

    rows = []
    for idx, turns in enumerate(_run_sync(messages())):
        limit = limits[idx] if limits is not None else None
        rendered = []
        for turn, (sent, truth) in enumerate(turns):
            if mode == "every":
                _check_placeholders(sent, truth, answers[idx][:turn], f"{where}: row {idx + 1}, turn {turn + 1}")
            if isinstance(limit, (list, tuple)):
                turn_limit = limit[-1] if mode == "last" else limit[turn] if turn < len(limit) else None
            else:
                turn_limit = limit
            rendered.append({"turn": len(answers[idx]) - 1 if mode == "last" else turn, "messages": sent,
                             "max_out_len": int(turn_limit) if turn_limit else None})
        rows.append({"infer_mode": mode, "turns": rendered})
    return rows


def _check_placeholders(sent: list[dict[str, Any]], truth: list[dict[str, Any]], answers: list[str],
                        where: str) -> None:
    """Each earlier reply's placeholder is in the messages once, verbatim, and the dataset's answers put in their
    places give AISBench's own messages for those answers: then replies put there give what AISBench would send."""
    text = "".join(m["content"] for m in sent if isinstance(m.get("content"), str))
    if any(text.count(REPLY.format(t)) != 1 for t in range(len(answers))) or fill_replies(sent, answers) != truth:
        raise ConfigError(f"{where}: the model config's template does not carry each earlier reply through once, "
                          "verbatim: replies cannot be fed back as AISBench feeds them")


def conversation_request(key: SampleKey, endpoint: str, conversation: dict[str, Any],
                         fields: dict[str, Any]) -> SampleRequest:
    """One conversation: a part per turn, each a chat body (`fields`: model and AISBench's sampling fields; a
    turn's own max_out_len wins over theirs, as a row's does). Its `body` holds every turn, so its fingerprint
    covers them all."""
    parts = []
    for spec in conversation["turns"]:
        max_tokens = spec["max_out_len"] or fields.get("max_tokens")
        parts.append({"label": f"turn {spec['turn'] + 1}", "turn": spec["turn"],
                      "body": {**fields, "messages": spec["messages"], "max_tokens": max_tokens}})
    body = {**fields, "infer_mode": conversation["infer_mode"],
            "turns": [{"messages": p["body"]["messages"], "max_tokens": p["body"]["max_tokens"]} for p in parts]}
    return SampleRequest(key=key, endpoint=endpoint, body=body, parts=parts)


def fill_replies(messages: list[dict[str, Any]], replies: list[str]) -> list[dict[str, Any]]:
    """The messages with each REPLY placeholder replaced by that turn's reply."""
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str) and "\x00" in content:
            for turn, reply in enumerate(replies):
                content = content.replace(REPLY.format(turn), reply)
            message = {**message, "content": content}
        out.append(message)
    return out


async def send_conversation(
    transports: Transports, request: SampleRequest, *, bounds: Bounds, max_retries: int, backoff_s: float,
    on_turn: Callable[[SampleResult], Awaitable[Any]] | None = None,
) -> SampleResult:
    """Send the conversation's turns one after another, each as `client.send_chat` sends a chat (streamed, bounded,
    retried); return its record, ok or failed (never raise for it). Turns answered in an earlier attempt at the same
    conversation (`result` in the part) are reused, not sent. After each answered turn but the last, `on_turn` gets
    the conversation so far (a failed record holding the answered turns) and is awaited before the next turn."""
    started_at = time.time()
    parts: list[dict[str, Any]] = []
    replies: list[str] = []
    error = None
    fresh = False  # once a turn is sent, later stored turns no longer follow from the replies before them
    for part in request.parts:
        if part.get("result") and not fresh:
            parts.append(part["result"])
            replies.append(part["result"]["response"])
            continue
        fresh = True
        messages = fill_replies(part["body"]["messages"], replies)
        turn_request = SampleRequest(key=request.key, endpoint=request.endpoint,
                                     body={**part["body"], "messages": messages})
        result = await send_chat(transports, turn_request, bounds=bounds, max_retries=max_retries,
                                 backoff_s=backoff_s)
        entry = {"label": part["label"], "turn": part["turn"], "messages": messages,
                 "max_tokens": part["body"].get("max_tokens"),
                 **{f: getattr(result, f) for f in TURN_FIELDS if getattr(result, f) is not None}}
        parts.append(entry)
        if result.status != "ok":
            error = f"{part['label']}: {result.error}"[:MAX_ERROR_CHARS]
            break
        replies.append(result.response)
        if on_turn is not None and len(parts) < len(request.parts):
            await on_turn(_record(request, parts, started_at, unfinished=True))
    return _record(request, parts, started_at, error=error)


def _record(request: SampleRequest, parts: list[dict[str, Any]], started_at: float, *, error: str | None = None,
            unfinished: bool = False) -> SampleResult:
    key = request.key
    ok = [p for p in parts if p.get("status") == "ok"]
    first = parts[0] if parts else {}
    if unfinished:
        error = (f"conversation unfinished: {len(ok)} of {len(request.parts)} turns answered (the rest were being "
                 "sent when this was recorded)")
    common: dict[str, Any] = dict(
        model=key.model, dataset=key.dataset, index=key.index, repeat=key.repeat, endpoint=request.endpoint,
        prompt=first.get("messages", []), attempts=sum(p.get("attempts", 0) for p in parts) or 1,
        started_at=started_at, finished_at=time.time(), fingerprint=request.fingerprint, parts=parts,
        latency_s=sum(p.get("latency_s") or 0.0 for p in parts),
        prompt_tokens=_total(ok, "prompt_tokens"), completion_tokens=_total(ok, "completion_tokens"),
        reasoning_tokens=_total(ok, "reasoning_tokens"),
    )
    if error is not None:
        return SampleResult(status="failed", error=error, **common)
    # The first turn's reply is what AISBench scores (module docstring); its reasoning and finish go with it.
    return SampleResult(status="ok", response=first.get("response", ""),
                        reasoning_content=first.get("reasoning_content"), finish_reason=first.get("finish_reason"),
                        **common)


def _total(parts: list[dict[str, Any]], field: str) -> int | None:
    values = [p.get(field) for p in parts]
    return sum(values) if values and all(isinstance(v, int) for v in values) else None
