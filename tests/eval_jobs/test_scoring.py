"""Scoring: per-sample verdicts are AISBench's evaluator's; pass@k / cons@k / CIs on hand-computed cases."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eval_jobs.datasets import EvalDataset, load_dataset
from eval_jobs.demo_dataset import DEMO_CONFIG
from eval_jobs.judge import ScoringError, _check_order, judge
from eval_jobs.scoring import default_ks, majority_vote, pass_at_k, summarize

# Demo rows 0-9 have answers 5, 10, 40, 6, 13, 17, 9, 14, 5, 9.
PREDICTIONS = [
    "3 + 2 = 5, so the answer is \\boxed{5}.",  # boxed, right
    "She has 10 left.\n\\boxed{11}",  # boxed, wrong
    "The answer is 40",  # unboxed "answer is" sentence, right
    "6",  # bare number, right
    "Let me think about it</think>Adding up gives \\boxed{13}",  # reasoning + </think>, right
    "<think>maybe \\boxed{17}</think>so \\boxed{16}",  # the boxed answer in the reasoning must not count
    "I think it is 9.",  # first-sentence fallback: "Ithinkitis9" != "9", wrong
    "\\boxed{14.}",  # "14." normalises to 14, right
    "\\boxed{05}",  # "05" != "5" for MATHEvaluator v2, wrong
    "",  # empty, wrong
]


@pytest.fixture(scope="module")
def demo(data_dir: Path) -> EvalDataset:
    return load_dataset(DEMO_CONFIG, data_dir=data_dir)


def aisbench_accuracy(predictions: list[str], references: list[str]) -> float:
    """AISBench directly: model postprocessor, dataset postprocessor, MATHEvaluator v2 score()."""
    from ais_bench.benchmark.datasets import MATHEvaluator, math_postprocess_v2
    from ais_bench.benchmark.utils.postprocess.model_postprocessors import extract_non_reasoning_content

    preds = [math_postprocess_v2(extract_non_reasoning_content(p)) for p in predictions]
    return MATHEvaluator(version="v2").score(preds, references)["accuracy"] / 100


def verdicts(dataset: EvalDataset, predictions: list[str], indices: list[int]) -> list[tuple[bool, str]]:
    return [(v.correct, v.extracted) for v in judge(dataset, predictions, indices).verdicts]


def test_accuracy_equals_aisbench_evaluator(demo) -> None:
    indices = list(range(len(PREDICTIONS)))
    judgement = judge(demo, PREDICTIONS, indices)
    verdicts = [(v.correct, v.extracted) for v in judgement.verdicts]
    assert [c for c, _ in verdicts] == [True, False, True, True, True, False, False, True, False, False]
    assert [e for _, e in verdicts][:6] == ["5", "11", "40", "6", "13", "16"]
    frame = pd.DataFrame(
        {
            "model": "m", "dataset": demo.name, "index": indices, "repeat": 0,
            "correct": [c for c, _ in verdicts], "extracted": [e for _, e in verdicts], "status": "ok",
        }
    )
    summary = summarize(frame).set_index("metric")
    expected = aisbench_accuracy(PREDICTIONS, demo.references[: len(PREDICTIONS)])
    assert expected == 0.5
    assert judgement.metrics == {"accuracy": pytest.approx(expected * 100)}  # the evaluator's own number
    assert summary.loc["accuracy", "value"] == pytest.approx(expected)
    assert list(summary.index) == ["accuracy", "avg@1"]  # no pass@k / cons@k for n = 1


def test_judge_maps_verdicts_to_their_samples(demo) -> None:
    forward = verdicts(demo, PREDICTIONS, list(range(10)))
    backward = verdicts(demo, PREDICTIONS[::-1], list(range(10))[::-1])
    assert backward == forward[::-1]
    # The same prediction judged against different rows: only the row whose answer is 5 accepts it.
    assert [c for c, _ in verdicts(demo, ["\\boxed{5}"] * 3, [0, 1, 8])] == [True, False, True]
    assert judge(demo, [], []).verdicts == []


def test_order_check_catches_shuffled_details() -> None:
    refs = ["5", "10", "40"]
    _check_order("d", [{"answer": r} for r in refs], refs)
    with pytest.raises(ScoringError, match="out of order"):
        _check_order("d", [{"answer": r} for r in ["10", "5", "40"]], refs)
    _check_order("d", [{"answer": r.upper() + "!"} for r in refs], refs)  # transformed answers: unchecked


def test_judge_applies_dataset_postprocessor(made_up_gsm8k: EvalDataset) -> None:
    # gsm8k references are "... #### 18": eval_cfg.dataset_postprocessor must reduce them to "18" first.
    assert verdicts(made_up_gsm8k, ["so 3 boxes hold 18 eggs", "The answer is 10"], [1, 0]) == [
        (True, "18"), (False, "10")]


@pytest.fixture(scope="module")
def made_up_gsm8k(tmp_path_factory: pytest.TempPathFactory) -> EvalDataset:
    import json

    root = tmp_path_factory.mktemp("gsm8k")
    rows = [{"question": "q0", "answer": "x\n#### 9"}, {"question": "q1", "answer": "y\n#### 18"}]
    for split in ("train", "test"):
        path = root / f"ais_bench/datasets/gsm8k/{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_dataset("gsm8k_gen_0_shot_cot_chat_prompt", data_dir=root)


def repeats_frame() -> pd.DataFrame:
    """n = 4 repeats of 4 questions, hand-checked below."""
    rows = []
    cases = {
        # index: [(status, correct, extracted) per repeat 0..3]
        0: [("ok", True, "5"), ("ok", False, "7"), ("ok", False, "8"), ("ok", True, "5")],
        # The k=2 vote of q1 is a tie.
        1: [("ok", False, "3"), ("ok", True, "9"), ("ok", True, "9"), ("ok", False, "4")],
        2: [("ok", False, "1"), ("ok", False, "2"), ("failed", None, None), ("ok", False, "1")],
        3: [("failed", True, None), ("ok", True, "4"), ("ok", True, "4"), ("ok", True, "4")],
    }
    for index, samples in cases.items():
        for repeat, (status, correct, extracted) in enumerate(samples):
            rows.append(
                dict(model="m", dataset="d", index=index, repeat=repeat, status=status, correct=correct,
                     extracted=extracted)
            )
    # Shuffle the row order: summarize must not depend on it.
    return pd.DataFrame(rows).sample(frac=1, random_state=3).reset_index(drop=True)


def test_pass_and_cons_at_k_hand_computed() -> None:
    summary = summarize(repeats_frame()).set_index("metric")
    # Per question: c = 2, 2, 0, 3 of n = 4 (the failed repeat of q3 counts as incorrect).
    expected = {
        "accuracy": (0.5 + 0.5 + 0 + 0.75) / 4,
        "avg@4": (0.5 + 0.5 + 0 + 0.75) / 4,
        "pass@1": (0.5 + 0.5 + 0 + 0.75) / 4,
        "pass@2": (5 / 6 + 5 / 6 + 0 + 1) / 4,  # 1 - C(2,2)/C(4,2) = 5/6; n-c=1 < 2 → 1
        "pass@4": (1 + 1 + 0 + 1) / 4,
        # cons@1: first answers 5 ✓, 3 ✗, 1 ✗, failed (no vote) ✗
        "cons@1": 1 / 4,
        # cons@2: q0 5-vs-7 tie → first (5) ✓; q1 3-vs-9 tie → first (3) ✗; q2 ✗; q3 only "4" votes ✓
        "cons@2": 2 / 4,
        # cons@4: q0 "5"×2 ✓, q1 "9"×2 ✓, q2 "1"×2 ✗, q3 "4"×3 ✓
        "cons@4": 3 / 4,
    }
    assert list(summary.index) == list(expected)
    for metric, value in expected.items():
        assert summary.loc[metric, "value"] == pytest.approx(value), metric
    assert (summary["n_questions"] == 4).all() and (summary["n_repeats"] == 4).all()
    assert (summary["failures"] == 2).all()
    per_question = np.array([0.5, 0.5, 0.0, 0.75])
    assert summary.loc["accuracy", "stderr"] == pytest.approx(per_question.std(ddof=1) / 2)
    assert summary.loc["accuracy", "stderr"] == pytest.approx(0.1572882, abs=1e-6)
    assert (summary["ci_low"] <= summary["value"]).all() and (summary["value"] <= summary["ci_high"]).all()
    assert summary.loc["pass@4", "ci_low"] >= 0.25 and summary.loc["pass@4", "ci_high"] == 1.0
    pd.testing.assert_frame_equal(summarize(repeats_frame()), summarize(repeats_frame()))  # fixed seed


def test_bootstrap_ci_of_a_proportion_matches_the_normal_approximation() -> None:
    """400 questions, 30 % right: the percentile bootstrap of the mean is p ± 1.96·√(p(1-p)/n) to within sampling
    noise (independent of scipy), the same on every call, and a single value or a constant has a zero-width CI."""
    from eval_jobs.scoring import bootstrap_ci

    values = np.array([1.0] * 120 + [0.0] * 280)
    half = 1.96 * math.sqrt(0.3 * 0.7 / len(values))
    low, high = bootstrap_ci(values)
    assert low == pytest.approx(0.3 - half, abs=0.006) and high == pytest.approx(0.3 + half, abs=0.006)
    assert bootstrap_ci(values) == (low, high)
    assert bootstrap_ci(np.array([0.5])) == (0.5, 0.5) and bootstrap_ci(np.ones(7)) == (1.0, 1.0)
    assert all(math.isnan(x) for x in bootstrap_ci(np.array([])))


def test_pass_at_k_matches_aisbench_and_helpers() -> None:
    from ais_bench.benchmark.openicl.icl_evaluator.icl_base_evaluator import compute_pass_at_k

    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(compute_pass_at_k(n, c, k)), (n, c, k)
    assert default_ks(4) == [1, 2, 4] and default_ks(6) == [1, 2, 4, 6] and default_ks(1) == [1]
    assert majority_vote(["7", "5", "5", "7"], [False, True, True, False]) is False  # tie → first seen ("7")
    assert majority_vote([], []) is False


def test_summarize_groups_models_and_datasets() -> None:
    a = repeats_frame()
    b = repeats_frame().assign(model="other", correct=True, status="ok", extracted="x")
    summary = summarize(pd.concat([a, b]), ks=[2])
    assert list(summary["metric"]) == ["accuracy", "avg@4", "pass@2", "cons@2"] * 2
    other = summary[summary["model"] == "other"].set_index("metric")
    assert other.loc["accuracy", "value"] == 1.0 and other.loc["cons@2", "value"] == 1.0
    assert other.loc["accuracy", "failures"] == 0 and math.isclose(other.loc["accuracy", "stderr"], 0.0)
