"""Every evaluator, per sample: verdicts and dataset-level numbers come from AISBench's own evaluators.

Data files come from the coverage generators (eval_jobs/coverage/data_files.py); the expected numbers are
computed here by calling AISBench's postprocessors and evaluators directly.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest

from cluster.errors import ConfigError
from eval_jobs import support
from eval_jobs.coverage.data_files import write_data_files
from eval_jobs.dataset_configs import _dataset_dicts, resolve_config
from eval_jobs.datasets import EvalDataset, _build, load_datasets
from eval_jobs.demo_dataset import DEMO_CONFIG
from eval_jobs.judge import judge
from eval_jobs.scoring import judge_frame, summarize


def made_up(config: str, root: Path) -> list[EvalDataset]:
    """The config's first dataset, loaded from a tiny made-up file in its class's format."""
    path = resolve_config(config)
    dcfg = _dataset_dicts(path)[0]
    assert write_data_files(dcfg, root)
    return [_build(dcfg, path, root)]


def aisbench_score(dataset: EvalDataset, predictions: list[str]) -> dict:
    """AISBench alone: model postprocessor, dataset pred_postprocessor, evaluator.score() over all samples."""
    from ais_bench.benchmark.registry import ICL_EVALUATORS, TEXT_POSTPROCESSORS

    preds = list(predictions)
    for cfg in (dataset.model_pred_postprocessor, dataset.eval_cfg.get("pred_postprocessor")):
        if cfg:
            kwargs = copy.deepcopy(cfg)
            proc = TEXT_POSTPROCESSORS.get(kwargs.pop("type"))
            preds = [proc(p, **kwargs) for p in preds]
    evaluator = ICL_EVALUATORS.build(copy.deepcopy(dataset.eval_cfg["evaluator"]))
    result = evaluator.score(predictions=preds, references=dataset.references)
    result.pop("details", None)
    return result


def frame_for(dataset: EvalDataset, responses: list[str], status: list[str] | None = None) -> pd.DataFrame:
    return pd.DataFrame({"model": "m", "dataset": dataset.name, "index": range(len(responses)), "repeat": 0,
                         "status": status or ["ok"] * len(responses), "response": responses})


def test_evaluator_without_details_is_scored_per_sample(tmp_path) -> None:
    # mmlu's gen config: AccEvaluator returns only {"accuracy"}, no details (was "NoneType details").
    [mmlu] = made_up("mmlu_gen_0_shot_cot_chat_prompt", tmp_path)
    letters = [str(r) for r in mmlu.references]
    responses = [f"The answer is {a}" if i % 3 else "The answer is Z" for i, a in enumerate(letters)]
    judgement = judge(mmlu, responses, list(range(len(responses))))
    assert [v.correct for v in judgement.verdicts] == [i % 3 != 0 for i in range(len(responses))]
    assert judgement.metrics == pytest.approx(aisbench_score(mmlu, responses))
    summary = summarize(judge_frame(frame_for(mmlu, responses), {mmlu.name: mmlu})).set_index("metric")
    expected = aisbench_score(mmlu, responses)["accuracy"]
    assert 0 < expected < 100
    assert summary.loc["accuracy", "value"] * 100 == pytest.approx(expected)
    assert summary.loc["accuracy", "source"] == "samples"


def test_every_ifeval_metric_is_reported_under_aisbench_names(tmp_path) -> None:
    [ifeval] = made_up("ifeval_0_shot_gen_str", tmp_path)
    responses = ["all lowercase here", "This Answer Has Enough Words In English For It."]
    summary = summarize(judge_frame(frame_for(ifeval, responses), {ifeval.name: ifeval}))
    from ais_bench.benchmark.datasets.ifeval.ifeval import IFEvaluator

    own = IFEvaluator().score(responses, ifeval.references, [m for m in ifeval.messages])
    own.pop("details")
    reported = summary[summary["source"] == "evaluator"].set_index("metric")["value"].to_dict()
    assert reported == pytest.approx(own)
    assert {"Prompt-level-strict-accuracy", "Inst-level-strict-accuracy", "Prompt-level-loose-accuracy",
            "Inst-level-loose-accuracy"} <= set(reported)


def test_non_binary_evaluator_keeps_its_own_dataset_number(tmp_path) -> None:
    # ROUGE: the dataset-level number is the evaluator's one call over all samples, not a mean of samples.
    [xsum] = made_up("Xsum_gen_0_shot_chat", tmp_path)
    responses = ["The cat sat.", "The cat sat 1 days.", "rain", "The cat sat 3 days."]
    frame = judge_frame(frame_for(xsum, responses), {xsum.name: xsum})
    assert frame["correct"].isna().all() and frame["score"].notna().all()
    summary = summarize(frame)
    reported = summary.set_index("metric")["value"].to_dict()
    assert reported == pytest.approx(aisbench_score(xsum, responses))
    assert set(summary["source"]) == {"evaluator"}  # no right/wrong, so no accuracy of our own


def test_one_dataset_that_cannot_be_scored_loses_only_itself(tmp_path, data_dir) -> None:
    [demo] = load_datasets(DEMO_CONFIG, data_dir=data_dir)
    [mmlu] = made_up("mmlu_gen_0_shot_cot_chat_prompt", tmp_path)
    broken = copy.deepcopy(mmlu)
    broken.name = "broken"
    broken.eval_cfg["evaluator"] = {"type": "ais_bench.benchmark.datasets.humaneval.HumanEvalEvaluator"}
    frames = [frame_for(demo, ["\\boxed{5}", "\\boxed{7}"]), frame_for(broken, ["A", "B"]),
              frame_for(mmlu, ["The answer is A", "The answer is A"])]
    frame = pd.concat(frames, ignore_index=True)
    summary = summarize(judge_frame(frame, {d.name: d for d in (demo, broken, mmlu)}))
    failed = summary[summary["error"].notna()]
    assert list(failed["dataset"]) == ["broken"]
    assert "HumanEvalEvaluator" in failed["error"].iloc[0]
    assert set(summary.loc[summary["value"].notna(), "dataset"]) == {demo.name, mmlu.name}


def test_failed_samples_are_scored_as_empty_answers(data_dir) -> None:
    [demo] = load_datasets(DEMO_CONFIG, data_dir=data_dir)
    frame = frame_for(demo, ["\\boxed{5}", "\\boxed{10}", "\\boxed{40}"], ["ok", "failed", "ok"])
    summary = summarize(judge_frame(frame, {demo.name: demo})).set_index("metric")
    assert summary.loc["accuracy", "value"] == pytest.approx(2 / 3)
    assert summary.loc["accuracy", "failures"] == 1


def test_missing_evaluator_package_is_refused_at_load(data_dir, monkeypatch) -> None:
    # The demo's evaluator needs nothing extra; declare a package that is not installed for it.
    evaluator = "ais_bench.benchmark.datasets.math.MATHEvaluator"
    monkeypatch.setitem(support.SCORE_TIME_IMPORTS, evaluator, [("no_such_module_x", "no-such-package")])
    with pytest.raises(ConfigError, match="demo_arith.*needs no-such-package, not installed"):
        load_datasets(DEMO_CONFIG, data_dir=data_dir)


def test_shipped_evaluator_packages_are_installed() -> None:
    # pyproject.toml installs what the shipped evaluators import while scoring.
    assert all(not support.missing_packages(e) for e in support.SCORE_TIME_IMPORTS)


def test_report_shows_the_dataset_that_could_not_be_scored(tmp_path, data_dir) -> None:
    from eval_jobs.evaluation import score
    from eval_jobs.records import SampleResult
    from eval_jobs.report import write_report
    from eval_jobs.store import RunDir

    [demo] = load_datasets(DEMO_CONFIG, data_dir=data_dir)
    broken = copy.deepcopy(demo)
    broken.name = "broken"
    broken.eval_cfg["evaluator"] = {"type": "ais_bench.benchmark.datasets.humaneval.HumanEvalEvaluator"}
    records = [SampleResult(model="m", dataset=d.name, index=i, repeat=0, status="ok", endpoint="http://x",
                            prompt=d.messages[i], response=f"\\boxed{{{d.references[i]}}}", started_at=1.0,
                            latency_s=0.5, finished_at=1.5)
               for d in (demo, broken) for i in range(3)]
    frame = score(records, {demo.name: demo, broken.name: broken})
    table = write_report(RunDir(tmp_path / "run"), frame, summarize(frame))
    assert table.loc[table["dataset"] == demo.name, "value"].notna().any()
    [reason] = table.loc[table["dataset"] == "broken", "error"].tolist()
    assert "HumanEvalEvaluator" in reason
    assert reason.replace("|", "\\|") in (tmp_path / "run" / "summary.md").read_text()


def test_repeats_are_scored_one_evaluator_call_each_and_averaged(data_dir) -> None:
    # As BaseEvaluator.evaluate: each replica scored alone, numbers averaged as "KEY (n runs average)".
    [demo] = load_datasets(DEMO_CONFIG, data_dir=data_dir)
    runs = [["\\boxed{5}", "\\boxed{10}", "\\boxed{1}", "\\boxed{6}"], ["\\boxed{5}", "x", "y", "z"]]
    frame = pd.concat([frame_for(demo, r).assign(repeat=i) for i, r in enumerate(runs)], ignore_index=True)
    summary = summarize(judge_frame(frame, {demo.name: demo})).set_index("metric")
    own = [aisbench_score(_first(demo, 4), r)["accuracy"] for r in runs]
    assert own == [75.0, 25.0]
    assert summary.loc["accuracy (2 runs average)", "value"] == pytest.approx(50.0)
    assert summary.loc["avg@2", "value"] == pytest.approx(0.5)


def _first(dataset: EvalDataset, n: int) -> EvalDataset:
    shorter = copy.copy(dataset)
    shorter.references = dataset.references[:n]
    return shorter
