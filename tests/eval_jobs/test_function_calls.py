"""BFCL v3 function calling (AISBench's BFCLV3FunctionCallInferencer) end to end on the real vLLM CPU engine:
the requests carry the functions as `tools` (seen on the wire), the predictions are AISBench's own inferencer's
on the same engine, per-sample verdicts give the BFCL evaluators' accuracy, the question is durable step by step,
and a rerun resumes without resending; a resumed multi-turn question replays its stored calls through bfcl_eval's
executor and feeds their results back to the engine."""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from shared import API_KEY, engine_requests

from cluster.errors import ConfigError
from eval_jobs import function_calls as fc
from eval_jobs.config import JobConfig
from eval_jobs.datasets import load_dataset
from eval_jobs.evaluation import run_job
from eval_jobs.records import SampleResult
from eval_jobs.store import RunDir, SampleStore

MODEL_CONFIG = "vllm_api_function_call_chat"
SINGLE, IRRELEVANCE, MULTI = "BFCL_gen_simple", "BFCL_gen_irrelevance", "BFCL_gen_multi_turn_base"
MAX_OUT_LEN = 8
ROWS = 2


class Recorder:
    """A plain HTTP forwarder in front of the endpoint that keeps every chat body it passes on (real HTTP both
    ways): what evalcluster put on the wire."""

    def __init__(self, target: str) -> None:
        self.bodies: list[dict] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self._forward(None)

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers["content-length"]))
                if self.path.endswith("/chat/completions"):
                    recorder.bodies.append(json.loads(raw))
                self._forward(raw)

            def _forward(self, raw: bytes | None) -> None:
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")}
                reply = httpx.request(self.command, target + self.path, content=raw, headers=headers, timeout=120)
                self.send_response(reply.status_code)
                self.send_header("content-type", reply.headers.get("content-type", "application/json"))
                self.send_header("content-length", str(len(reply.content)))
                self.end_headers()
                self.wfile.write(reply.content)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def recorder(endpoint) -> Iterator[Recorder]:
    rec = Recorder(endpoint.url)
    thread = threading.Thread(target=rec.server.serve_forever, daemon=True)
    thread.start()
    yield rec
    rec.server.shutdown()
    rec.server.server_close()


def job(url: str, output: Path, datasets: list[str], limit: int = ROWS) -> JobConfig:
    # Greedy, no early end of sequence: the same replies on every run and from AISBench's own inferencer.
    return JobConfig(eval=dict(
        endpoint=url, api_key=API_KEY, models=["tiny-a"], datasets=datasets, model_config=MODEL_CONFIG,
        clients=1, concurrency=2, timeout_s=60, output=str(output), trackers=[], limit=limit,
        generation=dict(temperature=0, max_out_len=MAX_OUT_LEN, extra_body={"ignore_eos": True})))


def aisbench_predictions(name: str, endpoint_url: str, rows: int) -> dict[int, object]:
    """AISBench's own BFCLV3FunctionCallInferencer (get_data_list, do_request) sending to the same engine as
    `vllm_api_function_call_chat` does: per row, the prediction its output handler stores (`tool_calls`)."""
    import aiohttp
    from ais_bench.benchmark.openicl.icl_inferencer.icl_base_api_inferencer import StatusCounter
    from ais_bench.benchmark.registry import ICL_INFERENCERS, ICL_RETRIEVERS
    from ais_bench.benchmark.utils.config import build_dataset_from_cfg
    from mmengine.config import Config

    from eval_jobs.dataset_configs import resolve_config

    host, port = endpoint_url.removeprefix("http://").split("/")[0].rsplit(":", 1)
    model_cfg = dict(type="ais_bench.benchmark.models.api_models.vllm_custom_api_chat.VLLMCustomAPIChat",
                     abbr="tiny", path="", model="tiny-a", stream=False, retry=2, api_key=API_KEY, host_ip=host,
                     host_port=int(port), url="", max_out_len=MAX_OUT_LEN, batch_size=1, returns_tool_calls=True,
                     generation_kwargs=dict(temperature=0, ignore_eos=True))
    dcfg = Config.fromfile(str(resolve_config(name)))["bfcl_datasets"][0]
    built = build_dataset_from_cfg(copy.deepcopy(dcfg))
    infer_cfg = dcfg["infer_cfg"]
    inferencer = ICL_INFERENCERS.build({**copy.deepcopy(infer_cfg["inferencer"]), "model_cfg": model_cfg,
                                        "batch_size": 1, "output_json_filepath": "/nonexistent"})
    inferencer.status_counter = StatusCounter(0)
    retriever = ICL_RETRIEVERS.build({**copy.deepcopy(infer_cfg["retriever"]), "dataset": built,
                                      "prompt_template": infer_cfg["prompt_template"]})
    data_list = inferencer.get_data_list(retriever)[:rows]

    async def run() -> None:
        async with aiohttp.ClientSession(trust_env=False) as session:
            for data in data_list:
                await inferencer.do_request(data, None, session)

    asyncio.run(run())
    out: dict[int, object] = {}
    queue = inferencer.output_handler.cache_queue.sync_q
    while not queue.empty():
        index, _, _, output, _ = queue.get_nowait()
        assert output.success
        out[index] = output.tool_calls
    return out


@pytest.mark.engine
def test_single_turn_questions_send_tools_and_score_as_aisbench(endpoint, recorder, ray_cluster, tmp_path):
    before = engine_requests(endpoint)
    table = run_job(job(recorder.url, tmp_path / "run", [SINGLE, IRRELEVANCE]))
    assert engine_requests(endpoint) - before == 2 * ROWS  # one request per question
    assert len(recorder.bodies) == 2 * ROWS
    ds = load_dataset(SINGLE, model_config=MODEL_CONFIG)
    for body in recorder.bodies:  # FC mode: the functions as OpenAI tools, never streamed
        assert body["stream"] is False and body["tools"] and body["max_tokens"] == MAX_OUT_LEN
        assert all(tool["type"] == "function" and "." not in tool["function"]["name"] for tool in body["tools"])
    # Two requests are in flight at a time: which one the forwarder saw first is not fixed, so match by messages.
    first = [b for b in recorder.bodies if b["messages"] == ds.messages[0]]
    assert len(first) == 1 and first[0]["tools"] == ds.function_calls[0]["turns"][0]["tools"]

    store = SampleStore(RunDir(tmp_path / "run").samples_jsonl)
    records = {(r.dataset, r.index): r for r in store.load()}
    theirs = {**{("BFCL-v3-simple", i): p for i, p in aisbench_predictions(SINGLE, endpoint.url, ROWS).items()},
              **{("BFCL-v3-irrelevance", i): p
                 for i, p in aisbench_predictions(IRRELEVANCE, endpoint.url, ROWS).items()}}
    assert {k: json.loads(r.response) for k, r in records.items()} == theirs
    # The tiny model calls no function: wrong where a call was expected, right where none was.
    accuracy = table[table["metric"] == "accuracy"].set_index("dataset")["value"].to_dict()
    assert accuracy == {"BFCL-v3-irrelevance": 1.0, "BFCL-v3-simple": 0.0}
    assert table["error"].isna().all()  # the verdicts reproduce the evaluators' own accuracy

    sent = len(recorder.bodies)
    run_job(job(recorder.url, tmp_path / "run", [SINGLE, IRRELEVANCE]))
    assert len(recorder.bodies) == sent  # a rerun sends nothing


@pytest.mark.engine
def test_a_multi_turn_question_is_durable_step_by_step_and_resumes_from_its_executed_calls(
        endpoint, recorder, ray_cluster, tmp_path):
    cfg = job(recorder.url, tmp_path / "run", [MULTI], limit=1)
    run_job(cfg)
    ds = load_dataset(MULTI, model_config=MODEL_CONFIG)
    turns = len(ds.function_calls[0]["turns"])
    # The tiny model calls nothing: each turn is one step, its reply appended before the next turn's message.
    assert len(recorder.bodies) == turns
    assert all(b["tools"] == ds.function_calls[0]["turns"][0]["tools"] for b in recorder.bodies)
    store = SampleStore(RunDir(tmp_path / "run").samples_jsonl)
    history = list(store.iter_records())
    assert [(r.status, len(r.parts)) for r in history] == [("failed", n) for n in range(1, turns)] + [("ok", turns)]
    final = history[-1]
    assert json.loads(final.response) == aisbench_predictions(MULTI, endpoint.url, 1)[0]
    table = run_job(cfg)
    assert len(recorder.bodies) == turns and table["error"].isna().all()

    # An earlier run of the question made a call in turn 1 (bfcl_eval's file system: `cd`), and died after it.
    spec = ds.function_calls[0]
    fields = {k: v for k, v in recorder.bodies[0].items() if k not in ("messages", "tools")}
    first_body = fc._body(fields, fc.sent_messages(spec["turns"][0]["messages"]), spec["turns"][0]["tools"])
    call = {"id": "call-1", "type": "function", "function": {"name": "cd", "arguments": '{"folder": "document"}'}}
    step = {"label": "turn 1 step 0", "sent": fc._digest(first_body), "status": "ok", "latency_s": 0.1,
            "attempts": 1, "message": {"role": "assistant", "content": "", "tool_calls": [call]},
            "decoded": ["cd(folder='document')"], "execution_results": ['{"current_working_directory": "document"}']}
    store.append([final.model_copy(update={"status": "failed", "error": "the run died", "parts": [step],
                                           "response": ""})])
    recorder.bodies.clear()
    run_job(cfg)
    resumed = store.load()[0]
    assert resumed.status == "ok" and resumed.parts[0] == step  # replayed: executed again, the same result
    # Sent: turn 1's next step, with the call's real result fed back as a tool message, then the other turns.
    assert len(recorder.bodies) == turns
    assert recorder.bodies[0]["messages"][-2:] == [
        {"content": "", "role": "assistant", "tool_calls": [call]},
        {"content": '{"current_working_directory": "document"}', "role": "tool", "tool_call_id": "call-1"}]
    assert json.loads(resumed.response)[0][0] == [{"cd": '{"folder": "document"}'}]


def test_decoding_and_messages_are_aisbenchs():
    """decode_step and sent_messages against AISBench's own impl classes on answers shaped as vLLM gives them."""
    from ais_bench.benchmark.models.output import FunctionCallOutput
    from ais_bench.benchmark.openicl.icl_inferencer.icl_bfcl_v3_inferencer import (
        BFCLV3FunctionInferencer,
        BFCLV3PromptInferencer,
    )

    call = {"id": "c1", "type": "function", "function": {"name": " ls ", "arguments": '{"a": true}'}}
    messages = [{"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "assistant", "content": '[{"mkdir": {"dir_name": "x"}}]', "tool_calls": []},
                {"role": "assistant", "content": "[cd(folder='a'), ls()]"},
                {"role": "assistant", "content": "no calls here"}]
    for fc_mode, impl in ((True, BFCLV3FunctionInferencer()), (False, BFCLV3PromptInferencer())):
        for message in messages:
            output = FunctionCallOutput()
            output.extra_details_data["message"] = message
            output.content = message.get("content") or ""
            theirs_raw: list = []
            data = {"message": []}
            theirs = impl.extra_multi_turn_response(output, data, theirs_raw)
            raw, decoded, ids = fc.decode_step(message, fc_mode)
            assert (raw, decoded) == (theirs_raw[0], theirs)
            if fc_mode:
                assert ids == data["tool_call_ids"]
    conversation = [{"role": "system", "content": "s"}, {"content": "no role"}, {"role": "weird", "content": "x"},
                    {"role": "user", "content": "u"}, messages[0],
                    {"role": "tool", "content": "r", "tool_call_id": "c1"}, {}]

    async def theirs() -> list:
        from ais_bench.benchmark.models.api_models.vllm_custom_api_chat import VLLMCustomAPIChat
        from ais_bench.benchmark.models.output import RequestOutput

        model = VLLMCustomAPIChat(model="m", max_out_len=8, generation_kwargs={})
        prompt = BFCLV3FunctionInferencer().convert_message_to_prompt_list(conversation)
        return (await model.get_request_body(prompt, 8, RequestOutput(False)))["messages"]

    assert fc.sent_messages(conversation) == asyncio.run(theirs())


def test_a_model_config_in_the_other_mode_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"BFCL-v3-simple.*returns_tool_calls=False.*vllm_api_function_call_chat"):
        load_dataset(SINGLE)  # vllm_api_general_chat: functions in the prompt, but the evaluator decodes tool calls


def test_an_unfinished_question_given_back_keeps_its_answered_steps():
    ds = load_dataset(MULTI, model_config=MODEL_CONFIG)
    from eval_jobs.records import SampleKey

    request = fc.function_call_request(SampleKey("m", ds.name, 0, 0), "http://x", ds.function_calls[0],
                                       {"model": "m", "max_tokens": 4, "stream": True, "stream_interval": 2})
    assert request.body["stream"] is False and "stream_interval" not in request.body
    step = {"label": "turn 1 step 0", "status": "ok", "message": {"role": "assistant", "content": "x"}}
    partial = SampleResult(model="m", dataset=ds.name, index=0, repeat=0, status="failed", error="unfinished",
                           endpoint="http://x", prompt=[], started_at=0.0, parts=[step, {"status": "failed"}])
    assert fc.with_answered_steps(request, partial).parts == [{"label": "turn 1 step 0", "result": step}]
    other = partial.model_copy(update={"fingerprint": "another question"})
    assert fc.with_answered_steps(request, other).parts == []


def test_a_failed_request_is_wrong_for_every_bfcl_evaluator_and_the_accuracies_agree(tmp_path):
    """A failed request counts as wrong, also on irrelevance questions (where calling nothing is right): the
    evaluator's own accuracy and the per-sample verdicts agree."""
    import pandas as pd

    from eval_jobs import dataset_configs as dc
    from eval_jobs import datasets as ds
    from eval_jobs.coverage.data_files import write_data_files
    from eval_jobs.coverage.function_call_formats import right_answer
    from eval_jobs.model_config import load_model_config
    from eval_jobs.scoring import judge_frame, summarize

    for name in (IRRELEVANCE, SINGLE, MULTI):
        path = dc.resolve_config(name)
        dcfg = dc._dataset_dicts(path)[0]
        write_data_files(dcfg, tmp_path / name)
        dataset = ds._build(dcfg, path, tmp_path / name, load_model_config(MODEL_CONFIG))
        responses = [right_answer(row, ref) for row, ref in zip(dataset.rows, dataset.references)]
        frame = pd.DataFrame({"model": "m", "dataset": dataset.name, "index": range(len(responses)), "repeat": 0,
                              "status": ["failed"] + ["ok"] * (len(responses) - 1),
                              "response": [""] + responses[1:]})
        judged = judge_frame(frame, {dataset.name: dataset})
        assert judged["correct"].tolist() == [False] + [True] * (len(responses) - 1), name
        summary = summarize(judged)
        assert summary["error"].isna().all(), summary["error"].tolist()
        assert summary.set_index("metric").loc["accuracy", "value"] == (len(responses) - 1) / len(responses)


@pytest.mark.engine
def test_through_serve_handles_a_question_gets_the_same_answers_as_over_http(endpoint, ray_cluster):
    """Client actors reach engines through Serve handles (`transport: auto`): the non-streamed answers of a
    single-turn and a multi-turn question are those of the HTTP endpoint, step for step."""
    from eval_jobs.client import serve_endpoint
    from eval_jobs.records import SampleKey
    from eval_jobs.work import ClientSettings, distribute
    from serve_apps.ingress import engine_app_name

    fields = {"model": "tiny-a", "max_tokens": MAX_OUT_LEN, "temperature": 0, "ignore_eos": True}
    routes = {"handles": serve_endpoint(engine_app_name("tiny-a")), "http": endpoint.url}
    requests = [fc.function_call_request(SampleKey("tiny-a", f"{name}-{route}", 0, 0), where,
                                         load_dataset(name, model_config=MODEL_CONFIG).function_calls[0], fields)
                for name in (SINGLE, MULTI) for route, where in routes.items()]
    results: list[SampleResult] = []
    distribute(requests, ClientSettings(concurrency=2, lease_size=2, timeout_s=60, max_retries=2, backoff_s=0.1,
                                        api_key=API_KEY), 1, results.extend)
    done = {r.dataset: r for r in results}
    assert len(done) == 4
    for name in (SINGLE, MULTI):
        handles, http = done[f"{name}-handles"], done[f"{name}-http"]
        assert handles.status == http.status == "ok", (handles.error, http.error)
        assert handles.response == http.response
        assert [p["message"] for p in handles.parts] == [p["message"] for p in http.parts]
