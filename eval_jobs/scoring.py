"""Scoring: AISBench's own evaluator judges each sample; evalcluster reduces samples to metrics.

    verdicts = judge(dataset, ["... \\\\boxed{70}", "I think 12"], indices=[0, 1])
    # -> [(True, "70"), (False, "Ithink12")]
    summary = summarize(samples)   # one row per model × dataset × metric

`judge` applies the postprocessors in the order OpenICLEvalTask._score does (the model config's
`pred_postprocessor`, i.e. `extract_non_reasoning_content` for vllm_api_general_chat, then the dataset's
`eval_cfg.pred_postprocessor`, then the evaluator's own) and reads per-sample correctness from the evaluator's
`score()['details']`. `summarize` is plain pandas/numpy: avg@n, unbiased pass@k, majority-vote cons@k,
standard errors and bootstrap CIs over questions. AISBench's own pass@k/cons@k are not used:
`BaseEvaluator.group` pairs details with the wrong questions for n > 1 (replica-major details zipped with a
row-major dataset) and its cons@k is "c > k/2" over all n samples, not a vote.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from cluster.errors import ConfigError
from eval_jobs.datasets import EvalDataset

# Keys BaseEvaluator.evaluate looks for, in its order, to read a detail's correctness.
CORRECT_KEYS = ("correct", "is_correct", "cascade_correct")
SUMMARY_COLUMNS = [
    "model", "dataset", "metric", "value", "stderr", "ci_low", "ci_high",
    "n_questions", "n_repeats", "failures",
]
N_BOOTSTRAP = 1000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95


def judge(dataset: EvalDataset, predictions: Sequence[str], indices: Sequence[int]) -> list[tuple[bool, str]]:
    """Judge `predictions[j]` (raw response text) against row `indices[j]` with AISBench's evaluator.

    Returns (correct, extracted answer) per prediction, in input order. A prediction holding reasoning
    (`reasoning + "</think>" + content`, as AISBench's client builds it) is judged on the content only.
    """
    if len(predictions) != len(indices):
        raise ValueError(f"{len(predictions)} predictions but {len(indices)} indices")
    if not predictions:
        return []
    from ais_bench.benchmark.registry import ICL_EVALUATORS

    eval_cfg = copy.deepcopy(dataset.eval_cfg)
    if "evaluator" not in eval_cfg:
        raise ConfigError(f"{dataset.config_path}: dataset {dataset.name!r}: eval_cfg has no evaluator")
    references = _references(dataset, eval_cfg)
    refs = [references[i] for i in indices]
    preds: list[Any] = list(predictions)
    for cfg in (dataset.model_pred_postprocessor, eval_cfg.get("pred_postprocessor")):
        if cfg:
            preds = _postprocess(cfg, preds)
    evaluator = ICL_EVALUATORS.build(eval_cfg["evaluator"])
    preds = evaluator.pred_postprocess(preds)  # BaseEvaluator.evaluate applies this per replica

    available = {
        "predictions": preds,
        "references": refs,
        "origin_prompt": [dataset.messages[i] for i in indices],
    }
    params = inspect.signature(evaluator.score).parameters
    if "test_set" in params:
        from datasets import Dataset

        available["test_set"] = Dataset.from_list([dataset.rows[i] for i in indices])
    required = [p for p, s in params.items() if s.default is inspect.Parameter.empty and p not in available]
    if required:
        raise ConfigError(
            f"{dataset.config_path}: evaluator {eval_cfg['evaluator'].get('type')!r} needs {required} "
            "to score: not supported"
        )
    result = evaluator.score(**{p: v for p, v in available.items() if p in params})
    if "error" in result:
        raise RuntimeError(f"{dataset.name}: AISBench evaluator error: {result['error']}")
    return _verdicts(dataset.name, result.get("details"), preds, refs)


def _verdicts(name: str, details: Any, preds: list[Any], refs: list[Any]) -> list[tuple[bool, str]]:
    """Per-sample (correct, extracted) from score()['details'], checking that detail j is sample j."""
    if isinstance(details, dict):  # some evaluators key details by str(index); evaluate() takes values()
        details = list(details.values())
    if not isinstance(details, list) or len(details) != len(preds):
        got = len(details) if isinstance(details, list) else type(details).__name__
        raise RuntimeError(f"{name}: evaluator returned {got} details for {len(preds)} predictions")
    _check_order(name, details, refs)
    verdicts = []
    for j, detail in enumerate(details):
        key = next((k for k in CORRECT_KEYS if k in detail), None)
        if key is None:
            raise RuntimeError(f"{name}: evaluator details have no per-sample correctness ({CORRECT_KEYS})")
        extracted = detail.get("pred", preds[j])
        verdicts.append((bool(detail[key]), extracted if isinstance(extracted, str) else str(extracted)))
    return verdicts


def _check_order(name: str, details: list[dict[str, Any]], refs: list[Any]) -> None:
    """The mapping assumes detail j belongs to prediction j. Evaluators that echo the references verbatim
    (MATHEvaluator, Gsm8kEvaluator: detail['answer']) let us check it; others transform the reference
    (e.g. LEval's answer[1]) and are left unchecked."""
    echoed = [d.get("answer") for d in details]
    known = {repr(r) for r in refs}
    if any(a is None or repr(a) not in known for a in echoed):
        return
    for j, (answer, ref) in enumerate(zip(echoed, refs)):
        if repr(answer) != repr(ref):
            raise RuntimeError(
                f"{name}: evaluator detail {j} has answer {answer!r}, expected {ref!r}: details out of order"
            )


def _references(dataset: EvalDataset, eval_cfg: dict[str, Any]) -> list[Any]:
    """References, through eval_cfg.dataset_postprocessor if set (as OpenICLEvalTask does)."""
    if "dataset_postprocessor" not in eval_cfg:
        return dataset.references
    return _postprocess(eval_cfg["dataset_postprocessor"], dataset.references)


def _postprocess(cfg: dict[str, Any], texts: list[Any]) -> list[Any]:
    """Apply one AISBench text postprocessor config ({"type": name or dotted path, **kwargs}) to each text."""
    from ais_bench.benchmark.registry import TEXT_POSTPROCESSORS

    kwargs = copy.deepcopy(cfg)
    proc = kwargs.pop("type")
    if isinstance(proc, str):
        proc = TEXT_POSTPROCESSORS.get(proc)
    return [proc(text, **kwargs) for text in texts]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one question with c of n samples correct: 1 - C(n-c, k) / C(n, k)."""
    if not 0 < k <= n:
        raise ValueError(f"need 0 < k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_vote(answers: Sequence[str], correct: Sequence[bool]) -> bool:
    """Whether the most frequent answer is correct. Ties go to the answer that appeared first, so the
    result is deterministic; no answers (all failed) counts as incorrect."""
    if not answers:
        return False
    counts = Counter(answers)
    top = max(counts.values())
    winner = next(a for a in answers if counts[a] == top)  # first in repeat order among the tied
    return bool(correct[list(answers).index(winner)])


def default_ks(n: int) -> list[int]:
    """k values reported for n repeats: powers of two up to n, and n itself (n=4 → 1, 2, 4)."""
    return sorted({2**j for j in range(n.bit_length()) if 2**j <= n} | {n})


def summarize(df: pd.DataFrame, ks: Sequence[int] | None = None) -> pd.DataFrame:
    """Reduce a per-sample frame to one row per (model, dataset, metric).

    Input columns: model, dataset, index, repeat, correct (bool), extracted (str), status ('ok'/'failed'; a
    failed sample counts as incorrect, has no vote in cons@k, and is counted in `failures`). Metrics:
    `accuracy` and `avg@n` (mean over questions of the fraction of repeats correct), and for n > 1 `pass@k`
    (unbiased estimator) and `cons@k` (majority vote over the first k repeats' extracted answers) for each
    k in `ks` (default `default_ks(n)`; k larger than some question's repeat count is skipped). Columns:
    value, stderr (standard error across questions), ci_low/ci_high (95% bootstrap over questions, 1000
    resamples, fixed seed), n_questions, n_repeats, failures.
    """
    missing = {"model", "dataset", "index", "repeat", "correct", "extracted", "status"} - set(df.columns)
    if missing:
        raise ValueError(f"summarize: missing columns {sorted(missing)}")
    rows: list[dict[str, Any]] = []
    for (model, dataset), group in df.groupby(["model", "dataset"], sort=True):
        rows += _summarize_group(str(model), str(dataset), group, ks)
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def _summarize_group(model: str, dataset: str, group: pd.DataFrame, ks: Sequence[int] | None) -> list[dict]:
    ok = (group["status"] == "ok").to_numpy()
    frame = pd.DataFrame(
        {
            "index": group["index"].to_numpy(),
            "repeat": group["repeat"].to_numpy(),
            "ok": ok,
            # `correct` may be missing (None/NaN) on failed rows; failed is incorrect whatever it says.
            "correct": group["correct"].astype("boolean").fillna(False).to_numpy(dtype=bool) & ok,
            "extracted": group["extracted"].where(group["extracted"].notna(), "").astype(str).to_numpy(),
        }
    ).sort_values(["index", "repeat"], kind="stable")
    questions = [q for _, q in frame.groupby("index", sort=True)]
    counts = np.array([len(q) for q in questions])
    n_correct = np.array([int(q["correct"].sum()) for q in questions])
    n_repeats = int(frame["repeat"].nunique())
    per_question: dict[str, np.ndarray] = {}
    per_question["accuracy"] = n_correct / counts
    per_question[f"avg@{n_repeats}"] = per_question["accuracy"]
    if n_repeats > 1:
        k_values = [k for k in (ks if ks is not None else default_ks(n_repeats)) if k <= counts.min()]
        for k in k_values:
            per_question[f"pass@{k}"] = np.array(
                [pass_at_k(int(n), int(c), k) for n, c in zip(counts, n_correct)]
            )
        for k in k_values:
            votes = []
            for q in questions:
                first_k = q.iloc[:k]  # sorted by repeat: the first k repeats
                voters = first_k[first_k["ok"]]
                votes.append(float(majority_vote(list(voters["extracted"]), list(voters["correct"]))))
            per_question[f"cons@{k}"] = np.array(votes)
    base = {
        "model": model,
        "dataset": dataset,
        "n_questions": len(questions),
        "n_repeats": n_repeats,
        "failures": int((~ok).sum()),
    }
    rows = []
    for metric, values in per_question.items():
        low, high = bootstrap_ci(values)
        rows.append(
            {**base, "metric": metric, "value": float(values.mean()), "stderr": standard_error(values),
             "ci_low": low, "ci_high": high}
        )
    return rows


def standard_error(values: np.ndarray) -> float:
    """Standard error of the mean across questions (NaN for fewer than two)."""
    if len(values) < 2:
        return math.nan
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


def bootstrap_ci(
    values: np.ndarray,
    n_resamples: int = N_BOOTSTRAP,
    confidence: float = CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean, resampling questions with a fixed seed (same input, same CI)."""
    if len(values) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    step = max(1, 2_000_000 // len(values))  # resample in chunks: bounded memory for large datasets
    for start in range(0, n_resamples, step):
        stop = min(start + step, n_resamples)
        picks = rng.integers(0, len(values), size=(stop - start, len(values)))
        means[start:stop] = values[picks].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)
