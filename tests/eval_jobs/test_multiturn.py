"""Multi-turn datasets (AISBench's MultiTurnGenInferencer) end to end: each mode's turns sent as AISBench's own
inferencer sends them to the same real vLLM CPU engine, per-turn max_tokens, the conversation stored turn by turn,
and a rerun of an unfinished conversation sending only its missing turns."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path

import pandas as pd
import pytest
from shared import API_KEY, engine_requests

from cluster.errors import ConfigError
from eval_jobs import dataset_configs as dc
from eval_jobs import datasets as ds
from eval_jobs.config import JobConfig
from eval_jobs.coverage.data_files import write_data_files, write_jsonl
from eval_jobs.evaluation import run_job
from eval_jobs.multiturn import REPLY, conversation_request
from eval_jobs.records import SampleKey, SampleResult
from eval_jobs.store import RunDir, SampleStore
from eval_jobs.work import Leases

MTBENCH = "mtbench_gen"
MAX_OUT_LEN = 6
ROWS = 3
# A user's config in the layout of mtbench_gen, on AISBench's generic JSONL loader, whose rows can give each turn
# its own max_out_len (CustomDataset reads `max_tokens`).
PER_TURN_CONFIG = """\
from ais_bench.benchmark.openicl.icl_prompt_template import MultiTurnPromptTemplate
from ais_bench.benchmark.openicl.icl_retriever import ZeroRetriever
from ais_bench.benchmark.openicl.icl_inferencer import MultiTurnGenInferencer
from ais_bench.benchmark.datasets import CustomDataset, MTBenchEvaluator

chats_datasets = [dict(
    abbr="chats", type=CustomDataset, path="chats/chats.jsonl",
    reader_cfg=dict(input_columns=["question", "answer", "max_out_len"], output_column="answer"),
    infer_cfg=dict(
        prompt_template=dict(type=MultiTurnPromptTemplate, template=dict(round=[
            dict(role="HUMAN", prompt="{question}"), dict(role="BOT", prompt="{answer}")])),
        retriever=dict(type=ZeroRetriever),
        inferencer=dict(type=MultiTurnGenInferencer, infer_mode="every")),
    eval_cfg=dict(evaluator=dict(type=MTBenchEvaluator)),
)]
"""
CHATS = [{"question": ["Say one word.", "Say two words.", "Say three."], "answer": ["a", "b c", "d e f"],
          "max_tokens": [3, 7, 5]},
         {"question": ["Count to two.", "Count back."], "answer": ["1 2", "2 1"], "max_tokens": [6, 2]}]


def job(endpoint_url: str, data_dir: Path, output: Path, datasets: list[str], **eval_fields) -> JobConfig:
    # Greedy, and no early end of sequence: a turn's tokens are its max_tokens, its text the same on every run.
    return JobConfig(eval=dict(
        endpoint=endpoint_url, api_key=API_KEY, models=["tiny-a"], data_dir=str(data_dir), datasets=datasets,
        clients=1, concurrency=2, timeout_s=60, output=str(output), trackers=[],
        generation=dict(temperature=0, max_out_len=MAX_OUT_LEN, extra_body={"ignore_eos": True}), **eval_fields))


def mtbench_in_mode(mode: str, root: Path) -> Path:
    """mtbench_gen as shipped, with `infer_mode` set to `mode` (a user's copy), and its tiny data file."""
    shipped = dc.resolve_config(MTBENCH)
    text = shipped.read_text().replace('infer_mode="every"', f'infer_mode="{mode}"')
    assert f'infer_mode="{mode}"' in text
    path = root / f"mtbench_{mode}.py"
    path.write_text(text.replace("abbr='mtbench'", f"abbr='mtbench_{mode}'"))
    write_data_files(dc._dataset_dicts(shipped)[0], root / "data")
    return path


def aisbench_turns(config: Path, data_dir: Path, endpoint_url: str) -> dict[int, list[tuple[list, str, int]]]:
    """AISBench's own MultiTurnGenInferencer (get_data_list, do_request in the config's mode) sending to the same
    engine as VLLMCustomAPIChat: per row, per turn (messages sent, reply, completion tokens)."""
    import os

    import aiohttp
    from ais_bench.benchmark.openicl.icl_inferencer.icl_base_api_inferencer import StatusCounter
    from ais_bench.benchmark.registry import ICL_INFERENCERS, ICL_RETRIEVERS
    from ais_bench.benchmark.utils.config import build_dataset_from_cfg
    from mmengine.config import Config

    host, port = endpoint_url.removeprefix("http://").split("/")[0].rsplit(":", 1)
    model_cfg = dict(type="ais_bench.benchmark.models.api_models.vllm_custom_api_chat.VLLMCustomAPIChat",
                     abbr="tiny", path="", model="tiny-a", stream=False, retry=2, api_key=API_KEY, host_ip=host,
                     host_port=int(port), url="", max_out_len=MAX_OUT_LEN, batch_size=1,
                     generation_kwargs=dict(temperature=0, ignore_eos=True))
    dcfg = Config.fromfile(str(config))[f"{config.stem.split('_')[0]}_datasets"][0]
    os.environ["AIS_BENCH_DATASETS_CACHE"] = str(data_dir)
    try:
        built = build_dataset_from_cfg(copy.deepcopy(dcfg))
    finally:
        del os.environ["AIS_BENCH_DATASETS_CACHE"]
    infer_cfg = dcfg["infer_cfg"]
    inferencer = ICL_INFERENCERS.build({**copy.deepcopy(infer_cfg["inferencer"]), "model_cfg": model_cfg,
                                        "batch_size": 1, "output_json_filepath": str(data_dir / "ais-out")})
    inferencer.status_counter = StatusCounter(0)  # what inference_with_shm sets up; 0: counts nothing
    retriever = ICL_RETRIEVERS.build({**copy.deepcopy(infer_cfg["retriever"]), "dataset": built,
                                      "prompt_template": infer_cfg["prompt_template"]})
    data_list = inferencer.get_data_list(retriever)[:ROWS]

    async def run() -> None:
        async with aiohttp.ClientSession(trust_env=False) as session:
            for data in data_list:
                await inferencer.do_request(data, None, session)

    asyncio.run(run())
    turns: dict[int, list[tuple[list, str, int]]] = {}
    queue = inferencer.output_handler.cache_queue.sync_q
    while not queue.empty():
        index, _, _, output, _ = queue.get_nowait()
        assert output.success, output.error_info
        turns.setdefault(index, []).append((output.input, output.content, output.output_tokens))
    return turns


@pytest.mark.engine
@pytest.mark.parametrize("mode", ["every", "every_with_gt", "last"])
def test_each_mode_sends_what_ais_bench_sends(mode, endpoint, ray_cluster, tmp_path):
    config = mtbench_in_mode(mode, tmp_path)
    data_dir = tmp_path / "data"
    dataset = ds.load_dataset(config, data_dir)
    questions = [row["question"] for row in dataset.rows]
    turns_per_row = [1 if mode == "last" else len(q) for q in questions[:ROWS]]
    before = engine_requests(endpoint)
    table = run_job(job(endpoint.url, data_dir, tmp_path / "run", [str(config)], limit=ROWS))
    assert engine_requests(endpoint) - before == sum(turns_per_row)  # one request per turn, nothing more

    samples = sorted(SampleStore(RunDir(tmp_path / "run").samples_jsonl).load(), key=lambda s: s.index)
    assert [s.status for s in samples] == ["ok"] * ROWS, [s.error for s in samples]
    if mode == "last":
        # AISBench 3.1's infer_last cannot send (`list + PromptList` recurses in PromptList.__radd__): what it means
        # to send, the last turn with the dataset's answers as history, is every_with_gt's last request.
        theirs = {i: turns[-1:] for i, turns in
                  aisbench_turns(mtbench_in_mode("every_with_gt", tmp_path), data_dir, endpoint.url).items()}
    else:
        theirs = aisbench_turns(config, data_dir, endpoint.url)
    for sample in samples:
        parts = sample.parts
        assert len(parts) == turns_per_row[sample.index]
        assert parts[-1]["label"] == f"turn {len(questions[sample.index])}"
        # The same messages turn by turn, the same greedy replies, each turn's max_tokens.
        assert [(p["messages"], p["response"], p["completion_tokens"]) for p in parts] == theirs[sample.index]
        assert all(p["max_tokens"] == MAX_OUT_LEN for p in parts)
        asked = questions[sample.index]
        answers = dataset.references[sample.index]
        last = parts[-1]["messages"]
        if mode == "every":  # the model's own replies fed back
            history = [m for t, q in enumerate(asked[:-1]) for m in (
                {"role": "user", "content": q}, {"role": "assistant", "content": parts[t]["response"]})]
        else:  # the dataset's answers as the history
            history = [m for q, a in zip(asked[:-1], answers) for m in (
                {"role": "user", "content": q}, {"role": "assistant", "content": a})]
        assert last == [*history, {"role": "user", "content": asked[-1]}]
        assert not any("\x00" in m["content"] for p in parts for m in p["messages"])  # every placeholder filled
        # What AISBench scores: the first turn's reply (in `last`, the one reply), against the row's answers.
        assert sample.response == parts[0]["response"] and sample.prompt == parts[0]["messages"]
        assert sample.completion_tokens == sum(p["completion_tokens"] for p in parts)
    scores = table[(table["dataset"] == f"mtbench_{mode}") & (table["metric"] == "accuracy")]
    assert scores["error"].isna().all() and scores["value"].tolist() == [0.0]  # MTBenchEvaluator: lists ≠ text


@pytest.mark.engine
def test_turns_are_durable_one_by_one_and_a_rerun_sends_only_the_missing_ones(endpoint, ray_cluster, tmp_path):
    config = tmp_path / "chats_gen.py"
    config.write_text(PER_TURN_CONFIG)
    data_dir = tmp_path / "data"
    write_jsonl(data_dir / "chats" / "chats.jsonl", CHATS)
    cfg = job(endpoint.url, data_dir, tmp_path / "run", [str(config)])
    before = engine_requests(endpoint)
    run_job(cfg)
    assert engine_requests(endpoint) - before == 5

    store = SampleStore(RunDir(tmp_path / "run").samples_jsonl)
    finals = sorted(store.load(), key=lambda s: s.index)
    assert [s.status for s in finals] == ["ok", "ok"]
    for sample, chat in zip(finals, CHATS):
        # Each turn asked for its own max_out_len, and got it all (no end of sequence).
        assert [p["max_tokens"] for p in sample.parts] == chat["max_tokens"]
        assert [p["completion_tokens"] for p in sample.parts] == chat["max_tokens"]
        assert sample.parts[1]["messages"][1] == {"role": "assistant", "content": sample.parts[0]["response"]}
    # Durable turn by turn: before its final record, each answered turn but the last was on disk, in order.
    history = [r for r in store.iter_records() if r.index == 0]
    assert [(r.status, len(r.parts)) for r in history] == [("failed", 1), ("failed", 2), ("ok", 3)]
    assert all(h.parts == finals[0].parts[:len(h.parts)] for h in history)
    assert history[0].error.startswith("conversation unfinished: 1 of 3 turns answered")

    # The run died after turn 1 of each conversation: the latest records hold that turn only.
    store.append([r.model_copy(update={"status": "failed", "error": "the run died", "parts": r.parts[:1],
                                       "response": ""}) for r in finals])
    before = engine_requests(endpoint)
    run_job(cfg)
    assert engine_requests(endpoint) - before == 3  # turns 2 and 3, and turn 2: the rest, nothing again
    again = sorted(store.load(), key=lambda s: s.index)
    assert [s.status for s in again] == ["ok", "ok"]
    for old, new in zip(finals, again):
        assert new.parts[0] == old.parts[0]  # reused as stored, not sent
        # Greedy: the turns sent again follow from the same first reply as before.
        assert [(p["messages"], p["response"]) for p in new.parts] == [
            (p["messages"], p["response"]) for p in old.parts]
    frame = pd.read_parquet(RunDir(tmp_path / "run").samples_parquet)
    assert len(frame) == 2 and (frame["status"] == "ok").all()


def test_a_conversation_given_back_resumes_from_the_turns_its_client_answered():
    """The queue keeps each answered turn in the sample's request: a client that dies mid-conversation loses only
    the turn it was sending; the driver gets the progress before the final record, never after it."""
    key = SampleKey("m", "chats", 0, 0)
    conversation = {"infer_mode": "every", "turns": [
        {"turn": 0, "messages": [{"role": "user", "content": "q1"}], "max_out_len": None},
        {"turn": 1, "messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": REPLY.format(0)},
                                 {"role": "user", "content": "q2"}], "max_out_len": 4}]}
    request = conversation_request(key, "http://127.0.0.1:1", conversation, {"model": "m", "max_tokens": 9})
    assert [p["body"]["max_tokens"] for p in request.parts] == [9, 4]
    queue = Leases([request], ttl_s=60)
    assert queue.lease("A", 1) == [request]
    turn = {"label": "turn 1", "turn": 0, "status": "ok", "response": "r1", "messages": conversation["turns"][0]}
    partial = SampleResult(model="m", dataset="chats", index=0, repeat=0, status="failed", error="unfinished",
                           endpoint=request.endpoint, prompt=[], started_at=0.0, parts=[turn])
    assert not queue.progress("B", partial)  # not B's
    assert queue.progress("A", partial)
    assert queue.release("A") == 1  # A died
    (resumed,) = queue.lease("B", 1)
    assert resumed.parts[0]["result"] == turn and "result" not in resumed.parts[1]
    final = partial.model_copy(update={"status": "ok"})
    assert queue.progress("B", partial)
    queue.record("B", [final])
    assert queue.take() == ([partial, partial], [final], 0)  # progress handed over with its final, to go first
    assert not queue.progress("B", partial)  # finished: no progress after the final record


def test_what_cannot_be_sent_as_ais_bench_sends_it_is_refused_by_name(tmp_path):
    config = mtbench_in_mode("every", tmp_path)
    with pytest.raises(ConfigError, match="needs a chat model config.*vllm_api_general speaks the completions API"):
        ds.load_dataset(config, tmp_path / "data", model_config="vllm_api_general")
    odd = tmp_path / "mtbench_sometimes.py"
    odd.write_text(config.read_text().replace('infer_mode="every"', 'infer_mode="sometimes"'))
    with pytest.raises(ConfigError, match="infer_mode = 'sometimes': MultiTurnGenInferencer supports every, last"):
        ds.load_dataset(odd, tmp_path / "data")
    # ShareGPT counts answer tokens with the model's tokenizer: `ais_bench` takes it from the model config's path.
    sharegpt = dc._dataset_dicts(dc.resolve_config("sharegpt_gen"))[0]
    write_data_files(sharegpt, tmp_path / "data")
    with pytest.raises(ConfigError, match="ShareGPTDataset counts tokens with the model's tokenizer.*`path`"):
        ds.load_dataset("sharegpt_gen", tmp_path / "data")


def test_a_client_killed_mid_conversation_loses_no_answered_turn(ray_cluster):
    """Real client actors against the simulated-latency engine (orchestration only, no score): the client is killed
    while turn 2 waits for its first token; its restart resumes the conversation from the queue, sending turns 2 and
    3, never turn 1 again, and the driver had turn 1 on its way to the store before the kill."""
    import ray
    from shared import sim_engine, sim_requests

    from eval_jobs.work import CLIENT_PREFIX, ClientSettings, distribute

    user = [{"role": "user", "content": f"q{t}"} for t in range(3)]
    reply = [{"role": "assistant", "content": REPLY.format(t)} for t in range(3)]
    conversation = {"infer_mode": "every", "turns": [
        {"turn": t, "messages": [m for i in range(t) for m in (user[i], reply[i])] + [user[t]], "max_out_len": None}
        for t in range(3)]}
    progress: list[SampleResult] = []
    finals: list[SampleResult] = []

    def kill_on_first_progress(batch: list[SampleResult]) -> None:
        if not progress:
            (victim,) = [n for n in ray.util.list_named_actors() if n.startswith(CLIENT_PREFIX)]
            ray.kill(ray.get_actor(victim))
        progress.extend(batch)

    # Each request waits 2 s for its first token: the driver sees turn 1's progress (within a 0.5 s poll) and kills
    # the client while turn 2 is still waiting.
    with sim_engine(ttft_s=2.0, tpot_s=0.01, output_tokens=None) as url:
        request = conversation_request(SampleKey("sim", "chats", 0, 0), url, conversation,
                                       {"model": "sim", "max_tokens": 3})
        settings = ClientSettings(concurrency=1, lease_size=1, timeout_s=30, max_retries=0, backoff_s=0.1)
        restarts = distribute([request], settings, 1, finals.extend, on_progress=kill_on_first_progress)
        sent = sim_requests(url)
    assert restarts == 1
    (final,) = finals
    assert final.status == "ok" and [p["label"] for p in final.parts] == ["turn 1", "turn 2", "turn 3"]
    assert final.parts[0] == progress[0].parts[0]  # turn 1 as first answered: reused, not sent again
    assert sent == 4  # turn 1, turn 2 (killed), turn 2 and turn 3
    assert final.parts[1]["messages"][1] == {"role": "assistant", "content": final.parts[0]["response"]}


def test_sharegpt_counts_tokens_with_the_model_configs_tokenizer(tmp_path, tiny_model):
    """With a model config whose `path` is the model (as `ais_bench` wants it), sharegpt loads: two turns a row."""
    shipped = dc.shipped_configs_dir() / dc.GENERAL_CHAT_MODEL
    model_config = tmp_path / "tiny_chat.py"
    model_config.write_text(shipped.read_text().replace('path=""', f'path="{tiny_model}"', 1))
    write_data_files(dc._dataset_dicts(dc.resolve_config("sharegpt_gen"))[0], tmp_path / "data")
    dataset = ds.load_dataset("sharegpt_gen", tmp_path / "data", model_config=str(model_config))
    assert len(dataset) == 6 and [len(c["turns"]) for c in dataset.conversations] == [2] * 6
    assert dataset.conversations[0]["turns"][1]["messages"][1] == {"role": "assistant",
                                                                   "content": REPLY.format(0)}
