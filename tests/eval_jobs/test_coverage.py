"""The coverage check on one config of each kind: real AISBench loaders, renderers and evaluators on tiny files."""

from __future__ import annotations

import pytest

from eval_jobs.coverage.check import check_config, check_configs, markdown
from eval_jobs.dataset_configs import resolve_config
from evalcluster_cli.main import main

SUPPORTED = [
    "gsm8k_gen_0_shot_cot_chat_prompt",  # Gsm8kEvaluator: per-sample details
    "mmlu_gen_0_shot_cot_chat_prompt",  # AccEvaluator: no details, 57 subjects
    "ARC_c_gen_25_shot_chat_prompt",  # 25-shot fixed-k retriever
    "ifeval_0_shot_gen_str",  # four accuracies, langdetect
    "bbh_gen_3_shot_cot_chat",  # two evaluators (mcq, free form), `score`
    "Xsum_gen_0_shot_chat",  # ROUGE: no right/wrong per sample
    "longbench_lsht_gen",  # a Hugging Face loading-script directory
    "math500_gen_0_shot_cot_chat_prompt",  # math_verify
    "livecodebench_0_shot_chat_v6",  # runs the generated code
    "ARC_c_ppl_0_shot_str",  # PPL: answers are option labels
    "FewCLUE_tnews_ppl_0_shot_chat",  # PPL over 15 labels, a Hugging Face json `data_files`, chat rounds
    "mtbench_gen",  # multi-turn: a conversation per row, its answers a list
    "sharegpt_gen",  # multi-turn, and a loader that needs the model's tokenizer
    "textvqa_gen_base64",  # images inline as base64 data URLs
    "mmstar_gen",  # a tsv of base64 images the loader writes out as files (file:// URLs)
    "videobench_gen_base64",  # video frames read with OpenCV, sent as base64 JPEGs
    "vocalsound_gen",  # audio files by path
    "videomme_gen",  # clips in the config's own `video_path` directory, resolved against the data dir
    "aime2025_gen_0_shot_llmjudge",  # an LLM judge: its prompts rendered, its verdicts scored
    "hle_llmjudge",  # a judge answering in JSON, an evaluator with no details and its accuracy as text
    "omnidocbench_gen",  # page layout ground truth + images; its evaluator writes side files to `_out_dir`
    "synthetic_gen_tokenid",  # no data file: random token ids decoded with the model's tokenizer
    "ocrbench_v2_gen_0_shot_chat",  # base64 images in a tsv; its module needs ipdb, zss, Polygon3 ... to import
]
BFCL_CONFIGS = 22  # AISBench's BFCL/ directory: 22 dataset configs and BFCL_gen_ids.py, a helper
REFUSED = {
    "gedit_gen_0_shot_llmjudge": "LMMGenInferencer: the model must answer with an edited image",
    "race_gen": "broken upstream: it imports race_high_5_shot_cot_chat",
    "mmlu_gen_5_shot_chat_prompt": "broken upstream: it imports ais_bench.benchmark.utils.text_postprocessors",
    # scored 0 for every answer as shipped: refused at load, before a request is sent
    "humanevalx_gen_0_shot": "HumanevalXEvaluator: broken upstream",
    "mooncake_trace_gen": "MooncakeTraceDataset: a request trace replayed at its timestamps",
}


@pytest.mark.parametrize("name", SUPPORTED)
def test_supported_config_loads_renders_and_scores(name: str) -> None:
    result = check_config(name, resolve_config(name))
    assert (result.loads, result.renders, result.scores, result.reason) == (True, True, True, None)
    assert result.metrics and 1 <= result.checked <= result.total


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refusal_says_why_in_one_line(name: str) -> None:
    result = check_config(name, resolve_config(name))
    assert not result.scores
    assert REFUSED[name] in result.reason and "\n" not in result.reason


def test_cli_writes_the_table(tmp_path, capsys) -> None:
    out = tmp_path / "coverage.md"
    assert main(["datasets", "--check", "--search", "gsm8k_gen_4_shot*", "--output", str(out)]) == 0
    table = out.read_text()
    assert "**2 of 2 shipped AISBench dataset configs load, render and score.**" in table
    assert "| `gsm8k/gsm8k_gen_4_shot_cot_str.py` | yes | yes | yes | 1/1 |" in table
    assert "LRS gsm8k_gen_4_shot_cot_chat_prompt: ok" in capsys.readouterr().out


def test_markdown_counts_only_shipped_configs() -> None:
    results = [check_config(n, resolve_config(n)) for n in ("demo_arith_gen_0_shot_chat_prompt", "race_gen")]
    assert "**0 of 1 shipped" in markdown(results)  # the repo's own demo config is listed, not counted


def test_every_bfcl_config_loads_renders_and_scores_on_bfcl_evals_own_rows() -> None:
    results = check_configs("BFCL_gen_*")
    assert len(results) == BFCL_CONFIGS
    assert [(r.config, r.reason) for r in results if not (r.loads and r.renders and r.scores)] == []
    assert all({"accuracy", "correct_count", "total_count"} <= set(r.metrics) for r in results)


@pytest.mark.parametrize("name", ["BFCL_gen_simple", "BFCL_gen_javascript", "BFCL_gen_live_parallel_multiple",
                                  "BFCL_gen_irrelevance", "BFCL_gen_live_relevance", "BFCL_gen_multi_turn_miss_func"])
def test_bfcl_reference_calls_are_right_and_wrong_answers_wrong(name: str, tmp_path) -> None:
    """The real BFCL evaluators (AST checker; multi-turn: bfcl_eval executing both call lists) on the reference
    calls (even rows) and a wrong answer (odd rows): verdicts by id, and the evaluator's accuracy equal to theirs."""
    import pandas as pd

    from eval_jobs import dataset_configs as dc
    from eval_jobs import datasets as ds
    from eval_jobs.coverage.check import _model_config_for
    from eval_jobs.coverage.data_files import write_data_files
    from eval_jobs.coverage.function_call_formats import right_answer, wrong_answer
    from eval_jobs.scoring import judge_frame, summarize

    path = resolve_config(name)
    dcfg = dc._dataset_dicts(path)[0]
    write_data_files(dcfg, tmp_path)
    dataset = ds._build(dcfg, path, tmp_path, _model_config_for(dcfg))
    responses = [right_answer(row, ref) if i % 2 == 0 else wrong_answer(row, "I do not know.")
                 for i, (row, ref) in enumerate(zip(dataset.rows, dataset.references))]
    frame = pd.DataFrame({"model": "m", "dataset": dataset.name, "index": range(len(responses)), "repeat": 0,
                          "status": "ok", "response": responses})
    judged = judge_frame(frame, {dataset.name: dataset})
    assert judged["correct"].tolist() == [i % 2 == 0 for i in range(len(responses))]
    summary = summarize(judged)
    assert summary["error"].isna().all()  # else the verdicts and the evaluator's own accuracy differ
    assert summary.set_index("metric").loc["accuracy", "value"] == 0.5
