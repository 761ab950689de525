"""PPL datasets (AISBench's PPLInferencer) end to end: options rendered as AISBench renders them, one request per
option to the real vLLM CPU engine with prompt_logprobs, the lowest perplexity chosen as AISBench chooses it, scored
by the dataset's own evaluator, stored and resumed per question."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path

import httpx
import pandas as pd
import pytest
from shared import API_KEY, engine_requests

from eval_jobs import dataset_configs as dc
from eval_jobs import datasets as ds
from eval_jobs.client import Bounds, Transports
from eval_jobs.config import JobConfig
from eval_jobs.coverage.data_files import write_data_files
from eval_jobs.evaluation import run_job
from eval_jobs.ppl import choose, perplexity, ppl_request, reuse_parts, send_ppl
from eval_jobs.records import SampleKey
from eval_jobs.store import RunDir, SampleStore

ARC = "ARC_c_ppl_0_shot_str"  # plain-text option prompts, AccEvaluator
SIQA = "siqa_ppl_0_shot_chat"  # HUMAN/BOT rounds per option: the answer is an assistant turn


def job(endpoint_url: str, data_dir: Path, output: Path, **eval_fields) -> JobConfig:
    return JobConfig(eval=dict(endpoint=endpoint_url, api_key=API_KEY, models=["tiny-a"], data_dir=str(data_dir),
                               clients=2, concurrency=2, timeout_s=60, output=str(output), **eval_fields))


def tiny_data(name: str, root: Path) -> Path:
    """The config's data file in its dataset class's format (the coverage check's writers: invented rows)."""
    write_data_files(dc._dataset_dicts(dc.resolve_config(name))[0], root)
    return root


@pytest.mark.parametrize("name", [ARC, SIQA])
def test_options_are_the_prompts_aisbench_sends(name, tmp_path, aisbench_build):
    """Each option's messages equal what PPLInferencer.get_data_list + VLLMCustomAPIChat.get_ppl_request_body make."""
    from ais_bench.benchmark.models.output import RequestOutput
    from ais_bench.benchmark.registry import ICL_INFERENCERS, ICL_RETRIEVERS
    from mmengine.config import Config

    data_dir = tiny_data(name, tmp_path)
    dataset = ds.load_dataset(name, data_dir)
    built, dcfg = aisbench_build(name, data_dir)
    model_cfg = copy.deepcopy(Config.fromfile(str(dc.shipped_configs_dir() / dc.GENERAL_CHAT_MODEL))["models"][0])
    model_cfg["model"] = "reference"
    model_type = model_cfg["type"]
    model_cfg["type"] = f"{model_type.__module__}.{model_type.__name__}"
    infer_cfg = dcfg["infer_cfg"]
    inferencer = ICL_INFERENCERS.build({**copy.deepcopy(infer_cfg["inferencer"]), "model_cfg": model_cfg,
                                        "batch_size": 1, "output_json_filepath": str(tmp_path / "out")})
    retriever = ICL_RETRIEVERS.build({**copy.deepcopy(infer_cfg["retriever"]), "dataset": built,
                                      "prompt_template": infer_cfg.get("prompt_template"),
                                      "ice_template": infer_cfg.get("ice_template")})
    data_list = inferencer.get_data_list(retriever)

    async def bodies() -> list[dict[str, dict]]:
        return [{str(label): await inferencer.model.get_ppl_request_body(qa["prompt"], d["max_out_len"],
                                                                        RequestOutput(False))
                 for label, qa in d["qa"].items()} for d in data_list]

    theirs = asyncio.run(bodies())
    assert len(theirs) == len(dataset) > 0
    for row, (options, their_row) in enumerate(zip(dataset.ppl_options, theirs)):
        assert dataset.ppl_labels == list(their_row), row
        assert options == [their_row[label]["messages"] for label in dataset.ppl_labels], row
        assert all(body["prompt_logprobs"] == 0 and body["stream"] is False for body in their_row.values())
    assert [str(d["gold"]) for d in data_list] == [str(r) for r in dataset.references]


def _aisbench_choice(prompt_logprobs: list[list]) -> tuple[list[float], str]:
    """AISBench's own computation on the engine's answers: BaseAPIModel._calc_ppl per option, then
    PPLInferencer._calc_prediction (neither reads `self`)."""
    from ais_bench.benchmark.models.api_models.base_api import BaseAPIModel
    from ais_bench.benchmark.openicl.icl_inferencer.ppl_inferencer import PPLInferencer

    ppls = [BaseAPIModel._calc_ppl(None, lp) for lp in prompt_logprobs]
    return ppls, PPLInferencer._calc_prediction(None, [{"label": label, "ppl": p} for label, p in zip("ABCD", ppls)])


@pytest.mark.engine
def test_ppl_job_chooses_as_aisbench_scores_with_its_evaluator_and_resumes(endpoint, tmp_path, ray_cluster):
    data_dir = tiny_data(ARC, tmp_path / "data")
    rows = 6
    cfg = job(endpoint.url, data_dir, tmp_path / "run", datasets=[ARC], limit=rows)
    before = engine_requests(endpoint)
    table = run_job(cfg)
    assert engine_requests(endpoint) - before == rows * 4  # one request per option, nothing more

    run = RunDir(tmp_path / "run")
    assert len(pd.read_parquet(run.samples_parquet)) == rows
    samples = SampleStore(run.samples_jsonl).load()
    assert len(samples) == rows and all(s.status == "ok" for s in samples)
    dataset = ds.load_dataset(ARC, data_dir)
    for sample in samples:
        parts = sample.parts
        assert [p["label"] for p in parts] == ["A", "B", "C", "D"]
        assert [p["messages"] for p in parts] == dataset.ppl_options[sample.index]
        assert all(p["status"] == "ok" and p["logprob_tokens"] > 1 for p in parts)
        # The same option bodies, straight to the engine; AISBench's formula and tie rule on its raw logprobs.
        answers = [httpx.post(endpoint.url + "/v1/chat/completions", timeout=60,
                              headers={"Authorization": f"Bearer {API_KEY}"},
                              json={"model": "tiny-a", "messages": p["messages"], "max_tokens": 1,
                                    "prompt_logprobs": 0, "temperature": 0}).json() for p in parts]
        ppls, chosen = _aisbench_choice([a["prompt_logprobs"] for a in answers])
        assert [p["ppl"] for p in parts] == pytest.approx(ppls, rel=1e-4)
        gaps = sorted(ppls)
        if gaps[1] - gaps[0] > 1e-3:  # float32 on CPU: a near-tie may break either way between two batchings
            assert sample.response == chosen
        assert sample.response == choose([(p["label"], p["ppl"]) for p in parts])
        assert sample.prompt == parts["ABCD".index(sample.response)]["messages"]

    # AccEvaluator's own accuracy (a percentage) and the per-sample verdicts say the same.
    expected = sum(s.response == dataset.references[s.index] for s in samples) / rows
    tiny = table[(table["model"] == "tiny-a") & (table["dataset"] == "ARC-c")]
    assert tiny["error"].isna().all()
    values = tiny.groupby("metric")["value"].first()
    assert values["accuracy"] == pytest.approx(expected)  # the samples' own row, checked against AccEvaluator's

    # Resume: every question is stored with its options, nothing is sent again.
    before = engine_requests(endpoint)
    run_job(cfg)
    assert engine_requests(endpoint) - before == 0


@pytest.mark.engine
def test_an_option_the_server_refuses_fails_the_question_with_its_reason(endpoint, tmp_path, ray_cluster):
    """A 4xx on one option (here: a model the server does not serve) ends the question at once, naming it."""
    data_dir = tiny_data(ARC, tmp_path)
    dataset = ds.load_dataset(ARC, data_dir)
    request = ppl_request(SampleKey("nope", dataset.name, 0, 0), endpoint.url, dataset.ppl_options[0],
                          dataset.ppl_labels, {"model": "no-such-model"})

    async def send():
        async with Transports(1, API_KEY) as transports:
            return await send_ppl(transports, request, bounds=Bounds(idle_s=60), max_retries=2, backoff_s=0.01)

    result = asyncio.run(send())
    assert result.status == "failed" and result.attempts == 1
    assert result.error.startswith("option 'A': HTTP 404") and "(not retried)" in result.error
    assert [p["status"] for p in result.parts] == ["failed"]


def test_perplexity_is_aisbench_formula_and_ties_go_to_the_first_label():
    from ais_bench.benchmark.models.api_models.base_api import BaseAPIModel

    logprobs = [None, {"17": {"logprob": -1.5, "rank": 3}}, {"9": {"logprob": -0.25, "rank": 1}}]
    assert perplexity(logprobs) == (BaseAPIModel._calc_ppl(None, logprobs), 2)
    assert choose([("A", 2.0), ("B", 1.0), ("C", 1.0)]) == "B"


@pytest.mark.engine
def test_a_failed_question_retried_sends_only_its_missing_options(endpoint, tmp_path, ray_cluster):
    """Options answered before a question failed are kept by the rerun (same fingerprint): here option D's first
    try names a model the server lacks (a 404, not retried), the rerun's D the right one."""
    data_dir = tiny_data(ARC, tmp_path)
    dataset = ds.load_dataset(ARC, data_dir)
    key = SampleKey("tiny-a", dataset.name, 0, 0)
    good = ppl_request(key, endpoint.url, dataset.ppl_options[0], dataset.ppl_labels, {"model": "tiny-a"})
    broken = good.model_copy(update={"parts": [*good.parts[:3], {**good.parts[3], "body": {
        **good.parts[3]["body"], "model": "no-such-model"}}], "fingerprint": "same question"})
    good = good.model_copy(update={"fingerprint": "same question"})

    async def send(request):
        async with Transports(1, API_KEY) as transports:
            return await send_ppl(transports, request, bounds=Bounds(idle_s=60), max_retries=0, backoff_s=0)

    first = asyncio.run(send(broken))
    assert first.status == "failed" and [p["status"] for p in first.parts] == ["ok", "ok", "ok", "failed"]
    before = engine_requests(endpoint)
    (retry,) = reuse_parts([good], {key: first})
    second = asyncio.run(send(retry))
    assert engine_requests(endpoint) - before == 1  # only D
    assert second.status == "ok" and [p["status"] for p in second.parts] == ["ok"] * 4
    assert second.parts[:3] == first.parts[:3]
    assert second.response == choose([(p["label"], p["ppl"]) for p in second.parts])
    # A record made by other inputs (another fingerprint) is not reused.
    (fresh,) = reuse_parts([good.model_copy(update={"fingerprint": "changed"})], {key: first})
    assert not any("result" in p for p in fresh.parts)
