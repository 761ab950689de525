"""LLM-judged datasets end to end: one real vLLM CPU checkpoint answers an aime2025-format file, the other judges the
answers; the judge's prompts are AISBench's, its requests are stored samples, its unreadable answers failed
judgements with their reason, and a rerun sends only what is missing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from shared import API_KEY, engine_requests

from cluster.errors import ConfigError
from eval_jobs.config import JobConfig
from eval_jobs.dataset_configs import shipped_configs_dir
from eval_jobs.evaluation import exit_code, run_job
from eval_jobs.store import RunDir, SampleStore

SHIPPED = shipped_configs_dir() / "datasets" / "aime2025" / "aime2025_gen_0_shot_llmjudge.py"
QUESTIONS = [("What is 2+3?", "5"), ("What is 7*6?", "42"), ("What is 9-4?", "5")]
# The shipped grader prompt is ~1300 tokens of the tiny model's vocabulary, more than its 512-token context: the
# test's config is the shipped one with a short grader prompt holding the same fields.
SHORT_GRADER = ('GRADER_TEMPLATE = """Question: {question}\\nGold: {answer}\\nAnswer: {model_answer}\\n'
                'Reply A if the answer matches the gold one, else B."""')


def judged_config(root: Path) -> Path:
    """AISBench's aime2025_gen_0_shot_llmjudge config, its grader prompt shortened; everything else as shipped."""
    text = SHIPPED.read_text()
    short, count = re.subn(r'GRADER_TEMPLATE = """.*?""".strip\(\)', lambda _: SHORT_GRADER, text, flags=re.S)
    assert count == 1
    path = root / "aime2025_short_llmjudge.py"
    path.write_text(short)
    return path


def aime_data(root: Path) -> Path:
    data = root / "data"
    (data / "ais_bench/datasets/aime2025").mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"question": q, "answer": a}) for q, a in QUESTIONS]
    (data / "ais_bench/datasets/aime2025/aime2025.jsonl").write_text("\n".join(lines) + "\n")
    return data


def job(endpoint_url: str, tmp_path: Path, **eval_fields) -> JobConfig:
    fields = dict(endpoint=endpoint_url, api_key=API_KEY, models=["tiny-a"], datasets=[str(judged_config(tmp_path))],
                  data_dir=str(aime_data(tmp_path)), generation={"max_out_len": 8, "temperature": 0},
                  judge={"model": "tiny-b", "generation": {"max_out_len": 4, "temperature": 0}},
                  clients=1, concurrency=4, timeout_s=60, output=str(tmp_path / "run"), trackers=[])
    return JobConfig(eval={**fields, **eval_fields})


def aisbench_judge_prompts(aisbench_messages, config: Path, data_dir: Path, answers: list) -> dict:
    """(index, repeat) → the judge prompt AISBench itself makes of these answers: its JudgeInfer worker's config
    rewrite (judge_dataset_type, judge_reader_cfg, judge_infer_cfg, predictions_path; cli/workers.py), a
    predictions file as its inferencer writes it, its judge dataset, then GenInferencer's rendering."""
    import os

    from ais_bench.benchmark.models.output import RequestOutput
    from ais_bench.benchmark.utils.config import build_dataset_from_cfg
    from mmengine.config import Config

    dcfg = Config.fromfile(str(config))["aime2025_datasets"][0]
    predictions = data_dir.parent / "predictions.jsonl"
    with predictions.open("w") as f:
        for record in answers:
            output = RequestOutput(False)
            output.content, output.reasoning_content = record.response, record.reasoning_content or ""
            uuid = f"{record.index}-{record.repeat}"
            f.write(json.dumps({"id": record.index, "uuid": uuid, "prediction": output.get_prediction()}) + "\n")
    judge_cfg = dcfg.pop("judge_infer_cfg")
    dcfg.update(type=judge_cfg.pop("judge_dataset_type"), reader_cfg=judge_cfg.pop("judge_reader_cfg"),
                predictions_path=str(predictions))
    judge_cfg.pop("judge_model")

    class TaskState:  # what AISBench's task runner hands its datasets; they report progress to it
        def update_task_state(self, state: dict) -> None:
            pass

    os.environ["AIS_BENCH_DATASETS_CACHE"] = str(data_dir)
    try:
        built = build_dataset_from_cfg(dcfg, task_state_manager=TaskState())
    finally:
        os.environ.pop("AIS_BENCH_DATASETS_CACHE")
    messages = aisbench_messages(built, {"infer_cfg": judge_cfg})
    keys = [tuple(int(x) for x in uuid.split("-")) for uuid in built.test["model_pred_uuid"]]
    return dict(zip(keys, messages))


@pytest.mark.engine
def test_one_checkpoint_answers_the_other_judges_and_a_rerun_sends_only_what_is_missing(
    endpoint, tmp_path, aisbench_messages
):
    cfg = job(endpoint.url, tmp_path, limit=2)
    before = engine_requests(endpoint, "tiny-a"), engine_requests(endpoint, "tiny-b")
    run_job(cfg)
    assert engine_requests(endpoint, "tiny-a") - before[0] == 2  # the answers
    assert engine_requests(endpoint, "tiny-b") - before[1] == 2  # their judgements

    # One more row: its answer and its judgement are sent, nothing judged before is judged again.
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"limit": 3})})
    before = engine_requests(endpoint, "tiny-a"), engine_requests(endpoint, "tiny-b")
    table = run_job(cfg)
    assert engine_requests(endpoint, "tiny-a") - before[0] == 1
    assert engine_requests(endpoint, "tiny-b") - before[1] == 1

    run = RunDir(tmp_path / "run")
    latest = SampleStore(run.samples_jsonl).latest()
    answers = sorted((r for r in latest.values() if r.dataset == "aime2025"), key=lambda r: r.index)
    judgements = {(r.index, r.repeat): r for r in latest.values() if r.dataset == "aime2025-judge"}
    assert len(answers) == 3 and all(r.status == "ok" for r in answers)
    assert sorted(judgements) == [(0, 0), (1, 0), (2, 0)]  # stored as samples of their own, one per answer
    assert all(r.status == "ok" and r.model == "tiny-a" for r in judgements.values())

    # The judge was sent AISBench's judge prompt of each answer, the answer in it as AISBench's prediction.
    reference = aisbench_judge_prompts(aisbench_messages, Path(cfg.eval.datasets[0]), Path(cfg.eval.data_dir),
                                       answers)
    for answer in answers:
        sent = judgements[(answer.index, answer.repeat)].prompt
        assert sent == reference[(answer.index, answer.repeat)]
        assert f"Answer: {answer.response}\n" in sent[-1]["content"]

    # A judge answer get_a_or_b cannot read (it reads the last character) is a failed judgement with its reason;
    # one it can read is the verdict. The tiny random model rarely ends on A or B.
    from ais_bench.benchmark.utils.postprocess.model_postprocessors import extract_non_reasoning_content

    samples = pd.read_parquet(run.samples_parquet).set_index(["index", "repeat"]).sort_index()
    unreadable = 0
    for key, judgement in judgements.items():
        text = extract_non_reasoning_content(judgement.response)
        row = samples.loc[key]
        assert row["judge_response"] == judgement.response
        if text[-1:] in ("A", "B"):
            assert row["judge_error"] is None and bool(row["correct"]) == (text[-1:] == "A")
        else:
            unreadable += 1
            assert "judge answer not parsed" in row["judge_error"] and repr(text[-1:]) in row["judge_error"]
            assert not row["correct"]
    assert unreadable >= 1
    summary = table[table["metric"] == "accuracy"].iloc[0]
    assert summary["judge_failures"] == unreadable and summary["failures"] == 0
    assert summary["value"] == samples["correct"].astype(bool).mean()

    # Run again: every answer and every judgement is on disk, nothing is sent.
    before = engine_requests(endpoint, "tiny-a"), engine_requests(endpoint, "tiny-b")
    run_job(cfg)
    assert (engine_requests(endpoint, "tiny-a"), engine_requests(endpoint, "tiny-b")) == before


@pytest.mark.engine
def test_a_judge_on_another_endpoint_whose_requests_fail_is_judged_on_the_rerun(endpoint, tmp_path):
    # The judge named by URL (over HTTP, its own key): first without the key it needs, so every judge request fails.
    cfg = job(endpoint.url, tmp_path, limit=2, judge={"model": "tiny-b", "endpoint": endpoint.url,
                                                      "generation": {"max_out_len": 4, "temperature": 0}})
    before = engine_requests(endpoint, "tiny-a"), engine_requests(endpoint, "tiny-b")
    table = run_job(cfg)
    assert engine_requests(endpoint, "tiny-a") - before[0] == 2
    assert engine_requests(endpoint, "tiny-b") == before[1]  # refused by the endpoint: no key
    samples = pd.read_parquet(RunDir(tmp_path / "run").samples_parquet)
    assert (samples["status"] == "ok").all() and not samples["correct"].astype(bool).any()
    assert samples["judge_error"].str.contains("the judge's request failed").all()
    assert samples["judge_error"].str.contains("401").all()
    assert table[table["metric"] == "accuracy"]["judge_failures"].tolist() == [2]
    assert exit_code(table) == 1  # a rerun retries the failed judge requests

    # With its key: the answers are reused, only the failed judgements are sent again.
    cfg = job(endpoint.url, tmp_path, limit=2, judge={"model": "tiny-b", "endpoint": endpoint.url, "api_key": API_KEY,
                                                      "generation": {"max_out_len": 4, "temperature": 0}})
    before = engine_requests(endpoint, "tiny-a"), engine_requests(endpoint, "tiny-b")
    assert exit_code(run_job(cfg)) == 0
    assert engine_requests(endpoint, "tiny-a") == before[0]
    assert engine_requests(endpoint, "tiny-b") - before[1] == 2
    samples = pd.read_parquet(RunDir(tmp_path / "run").samples_parquet)
    assert not samples["judge_error"].fillna("").str.contains("request failed").any()
    assert samples["judge_response"].notna().all()


@pytest.mark.engine
def test_with_no_models_named_every_served_model_but_the_judge_answers(endpoint, tmp_path):
    table = run_job(job(endpoint.url, tmp_path, models=[], limit=1))
    assert "tiny-a" in set(table["model"]) and "tiny-b" not in set(table["model"])
    latest = SampleStore(RunDir(tmp_path / "run").samples_jsonl).latest()
    assert {r.dataset for r in latest.values() if r.model == "tiny-a"} == {"aime2025", "aime2025-judge"}


def test_a_judged_dataset_without_a_judge_is_refused_before_anything_runs(tmp_path):
    cfg = job("http://127.0.0.1:9", tmp_path, judge=None)
    with pytest.raises(ConfigError) as err:
        run_job(cfg)
    message = str(err.value)
    assert "eval.judge.model" in message and "aime2025_short_llmjudge" in message and "judge_infer_cfg" in message
    assert not (tmp_path / "run").exists()


def test_judge_flags_do_not_collide_with_the_evaluated_endpoints_and_generation():
    from evalcluster_cli.config_flags import config_overrides
    from evalcluster_cli.main import build_parser

    args = build_parser().parse_args(["eval", "--endpoint", "http://a:1", "--judge-model", "j",
                                      "--judge-endpoint", "http://b:2", "--judge-max-out-len", "64",
                                      "--max-out-len", "8"])
    assert config_overrides(args, "eval") == {
        "endpoint": "http://a:1", "generation": {"max_out_len": 8},
        "judge": {"model": "j", "endpoint": "http://b:2", "generation": {"max_out_len": 64}},
    }


def sweep_config(tmp_path: Path, judge: dict, **sweep_fields) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(json.dumps({
        # The session's key: the sweep joins the session's ingress, which lists models only to callers with it.
        "serve": {"port": 0, "api_key": API_KEY},
        "eval": {"datasets": [str(judged_config(tmp_path))], "data_dir": str(aime_data(tmp_path)),
                 "generation": {"max_out_len": 8, "temperature": 0}, "judge": judge, "clients": 1,
                 "concurrency": 4, "timeout_s": 60, "output": str(tmp_path / "sweep"), "trackers": []},
        "sweep": {"watch": str(tmp_path / "checkpoints"), **sweep_fields}}))
    return path


def test_a_sweep_with_a_judge_but_no_judge_endpoint_is_refused_before_anything_starts(tmp_path):
    from eval_jobs.sweep.config import load_sweep_config
    from eval_jobs.sweep.run import run_sweep

    with pytest.raises(ConfigError, match=r"eval.judge.endpoint: .*aime2025_short_llmjudge.* served elsewhere"):
        run_sweep(load_sweep_config(sweep_config(tmp_path, {"model": "j"})))
    assert not (tmp_path / "sweep").exists()


@pytest.mark.engine
def test_a_sweep_checkpoint_is_judged_by_a_judge_on_another_endpoint_and_a_rerun_judges_nothing_again(
        endpoint, tiny_model, cpu_engine, tmp_path):
    """The sweep deploys its checkpoint, retires it once it answered, then sends each answer's judgement to tiny-b
    on the session's endpoint; the checkpoint's scores are made from those judgements, and a rerun sends none."""
    from eval_jobs.sweep.config import load_sweep_config
    from eval_jobs.sweep.run import run_sweep

    config = sweep_config(tmp_path, {"model": "tiny-b", "endpoint": endpoint.url, "api_key": API_KEY,
                                     "generation": {"max_out_len": 4, "temperature": 0}},
                          watch=None, checkpoints=[{"path": str(tiny_model), "name": "step_100", "step": 100}],
                          serving={"dtype": "float32", "max_model_len": 512})
    job = load_sweep_config(config)
    job = job.model_copy(update={"serve": job.serve.model_copy(update={"engine": cpu_engine})})
    before = engine_requests(endpoint, "tiny-b")
    result = run_sweep(job)
    assert engine_requests(endpoint, "tiny-b") - before == len(QUESTIONS)  # one judgement per answer

    latest = SampleStore(RunDir(tmp_path / "sweep").samples_jsonl).latest()
    judgements = [r for r in latest.values() if r.dataset == "aime2025-judge"]
    assert sorted(r.index for r in judgements) == [0, 1, 2]
    assert all(r.status == "ok" and r.model == "step_100" for r in judgements)
    samples = pd.read_parquet(RunDir(tmp_path / "sweep").samples_parquet)
    assert set(samples["dataset"]) == {"aime2025"}  # the judgements score the answers; no dataset of their own
    assert samples["judge_response"].notna().all()
    summary = pd.read_csv(RunDir(tmp_path / "sweep").summary_csv)
    row = summary[(summary["model"] == "step_100") & (summary["metric"] == "accuracy")].iloc[0]
    assert row["value"] == samples["correct"].astype(bool).mean()
    assert row["judge_failures"] == samples["judge_error"].notna().sum()
    curve = pd.read_csv(tmp_path / "sweep" / "sweep.csv").set_index("checkpoint")
    assert curve.loc["step_100", "value"] == row["value"] and result.exit_code == 0

    before = engine_requests(endpoint, "tiny-b")
    run_sweep(job)
    assert engine_requests(endpoint, "tiny-b") == before


def test_hle_verdicts_are_its_evaluators_reading_of_the_judges_json(tmp_path):
    """HLEJudgeEvaluator counts a judge answer right when its JSON says `"correct": "yes"`, skips (wrong) one it
    cannot parse, and reports accuracy as text: each sample's verdict is its own reading, a non-JSON answer is a
    failed judgement with the reason, and the text accuracy comes out as numbers matching the verdicts."""
    from eval_jobs import dataset_configs as dc
    from eval_jobs import datasets as ds
    from eval_jobs.coverage.data_files import write_data_files
    from eval_jobs.scoring import judge_frame

    config = dc.resolve_config("hle_llmjudge")
    dcfg = dc._dataset_dicts(config)[0]
    write_data_files(dcfg, tmp_path)
    dataset = ds._build(dcfg, config, tmp_path)
    verdict = {"extracted_final_answer": "4", "reasoning": "r", "confidence": 90, "strict": True}
    judged = [json.dumps(dict(verdict, correct="yes")), json.dumps(dict(verdict, correct="no")),
              json.dumps(dict(verdict, correct="yes"), indent=2), "The answer is correct."]
    frame = pd.DataFrame({"model": "m", "dataset": dataset.name, "index": range(4), "repeat": 0, "status": "ok",
                          "response": "Answer: 4", "judge_response": judged, "judge_failure": None})
    scored = judge_frame(frame, {dataset.name: dataset})
    assert scored["correct"].tolist() == [True, False, True, False]
    assert scored["judge_error"].iloc[:3].isna().all()
    assert "HLEJudgeEvaluator reads it as JSON" in scored["judge_error"].iloc[3]
    metrics = {row["metric"]: row["value"] for row in scored.attrs["evaluator_metrics"]}
    assert metrics["accuracy"] == 50.0 and metrics["accuracy +/-"] == 49.0  # "50.0% +/- 49.0%" (Wald, n = 4)
