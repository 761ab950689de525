"""Scoring: AISBench's evaluators judge the samples (`judge`), evalcluster reduces them to metrics.

    frame = judge_frame(samples_frame(records), datasets)   # + correct / score / extracted per sample
    summary = summarize(frame)   # one row per model × dataset × metric

`summarize` reports two kinds of rows (column `source`). `samples`: computed here from per-sample verdicts
with plain pandas/numpy: accuracy / avg@n, unbiased pass@k, majority-vote cons@k, standard errors and
bootstrap CIs over questions (datasets whose evaluator has right/wrong per sample). `evaluator`: every number
the dataset's AISBench evaluator returns, under its own name and on its own scale (AccEvaluator's `accuracy`
is a percentage), as `ais_bench` would report it. AISBench's own pass@k/cons@k are not used:
`BaseEvaluator.group` pairs details with the wrong questions for n > 1 (replica-major details zipped with a
row-major dataset) and its cons@k is "c > k/2" over all n samples, not a vote. A dataset that could not be
scored gets one row with its reason in `error`.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from cluster.errors import ConfigError
from eval_jobs.datasets import EvalDataset
from eval_jobs.judge import ScoringError, judge
from eval_jobs.llm_judge import judge_answers
from eval_jobs.reasoning import scored_text

log = logging.getLogger("evalcluster.scoring")
SUMMARY_COLUMNS = [
    "model", "dataset", "metric", "source", "value", "stderr", "ci_low", "ci_high",
    "n_questions", "n_repeats", "failures", "judge_failures", "error",
]
# frame.attrs keys judge_frame fills and summarize reads (a DataFrame's attrs travel with it, also to Parquet).
EVALUATOR_METRICS = "evaluator_metrics"
SCORING_ERRORS = "scoring_errors"
N_BOOTSTRAP = 1000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95


def judge_frame(frame: pd.DataFrame, datasets: Mapping[str, EvalDataset]) -> pd.DataFrame:
    """The per-sample frame with each sample's verdict (`correct`, `score`, `extracted`), each model × dataset
    scored on its own.

    Every repeat is one evaluator call over its rows in order (as BaseEvaluator.evaluate scores replicas); a
    failed sample is scored as an empty answer, as AISBench does with requests that failed, and counts as
    incorrect, and so is an answer cut inside its reasoning (`cut_in_reasoning`, see eval_jobs/reasoning.py:
    scored as empty, never on its reasoning text). The evaluator's own dataset-level numbers go to
    `frame.attrs[EVALUATOR_METRICS]`; a dataset its evaluator cannot score gets its reason in `frame.attrs[SCORING_ERRORS]` and no verdicts, and the
    others are scored all the same. `summarize` reads both.
    """
    frame = frame.copy()
    # True / False / None (no right or wrong: not scored, or a ROUGE-like evaluator): plain objects, so row
    # readers (the sample viewer) see None rather than pd.NA, whose truth value raises.
    frame["correct"] = pd.Series(None, index=frame.index, dtype=object)
    frame["score"] = np.nan
    frame["extracted"] = ""
    frame["judge_error"] = pd.Series(None, index=frame.index, dtype=object)  # a program that broke the scorer
    metric_rows: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    for (model, name), group in frame.groupby(["model", "dataset"], sort=True):
        try:
            if name not in datasets:
                raise ScoringError(f"dataset {name!r} is not among this run's datasets")
            per_repeat = []
            for _, rep in group.sort_values("index", kind="stable").groupby("repeat", sort=True):
                ok = (rep["status"] == "ok").to_numpy()
                # An answer cut inside its reasoning is never scored on that reasoning (eval_jobs/reasoning.py).
                cut = rep["cut_in_reasoning"] if "cut_in_reasoning" in rep else pd.Series(False, index=rep.index)
                answers = [scored_text(text, bool(c)) if good else ""
                           for text, good, c in zip(rep["response"].fillna(""), ok, cut)]
                failed_judgements: list[str | None] = [None] * len(answers)
                if datasets[name].llm_judge is not None:  # an LLM judged the answers: its answers are scored
                    answers, failed_judgements = judge_answers(datasets[name], rep)
                judgement = judge(datasets[name], answers, rep["index"].tolist())
                frame.loc[rep.index, "correct"] = [v.correct for v in judgement.verdicts]
                frame.loc[rep.index, "score"] = [v.score for v in judgement.verdicts]
                frame.loc[rep.index, "extracted"] = [v.extracted if good else "" for v, good in
                                                     zip(judgement.verdicts, ok)]
                frame.loc[rep.index, "judge_error"] = [failed or v.reason
                                                       for v, failed in zip(judgement.verdicts, failed_judgements)]
                per_repeat.append(judgement.metrics)
        except Exception as exc:  # any failure of one dataset's scoring: reported, the other datasets go on
            known = isinstance(exc, (ScoringError, ConfigError))
            reason = str(exc) if known else f"{type(exc).__name__}: {exc}"
            log.warning("model %s, dataset %s: not scored: %s", model, name, reason, exc_info=not known)
            errors.append({"model": str(model), "dataset": str(name), "error": reason})
            frame.loc[group.index, "correct"] = None
            frame.loc[group.index, "score"] = np.nan
            frame.loc[group.index, "extracted"] = ""
            continue
        for metric, value in _replica_average(per_repeat).items():
            metric_rows.append({"model": str(model), "dataset": str(name), "metric": metric, "value": value})
    frame.attrs[EVALUATOR_METRICS] = metric_rows
    frame.attrs[SCORING_ERRORS] = errors
    return frame


def _replica_average(per_repeat: list[dict[str, float]]) -> dict[str, float]:
    """Numbers of several repeats as BaseEvaluator.evaluate reports them: the mean over repeats, named
    `KEY (n runs average)` for n > 1 (`pass@1` becomes `accuracy (n runs average)`)."""
    n = len(per_repeat)
    keys = [k for k in per_repeat[0] if all(k in r for r in per_repeat)]
    if n == 1:
        return dict(per_repeat[0])
    return {f"{'accuracy' if k == 'pass@1' else k} ({n} runs average)": float(np.mean([r[k] for r in per_repeat]))
            for k in keys}


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

    Input columns: model, dataset, index, repeat, correct (bool, or missing where the evaluator has no
    right/wrong per sample), extracted (str), status ('ok'/'failed'; a failed sample counts as incorrect, has
    no vote in cons@k, and is counted in `failures`); `df.attrs` as `judge_frame` leaves them. Sample metrics
    (source `samples`): `accuracy` and `avg@n` (mean over questions of the fraction of repeats correct), and
    for n > 1 `pass@k` (unbiased estimator) and `cons@k` (majority vote over the first k repeats' extracted
    answers) for each k in `ks` (default `default_ks(n)`; k larger than some question's repeat count is
    skipped). Then the evaluator's own numbers (source `evaluator`), and a row with `error` for each dataset
    that could not be scored. Columns: value, stderr (standard error across questions), ci_low/ci_high (95%
    bootstrap over questions, 1000 resamples, fixed seed), n_questions, n_repeats, failures, error.
    """
    missing = {"model", "dataset", "index", "repeat", "correct", "extracted", "status"} - set(df.columns)
    if missing:
        raise ValueError(f"summarize: missing columns {sorted(missing)}")
    evaluator_rows = pd.DataFrame(df.attrs.get(EVALUATOR_METRICS, []), columns=["model", "dataset", "metric", "value"])
    errors = {(e["model"], e["dataset"]): e["error"] for e in df.attrs.get(SCORING_ERRORS, [])}
    rows: list[dict[str, Any]] = []
    for (model, dataset), group in df.groupby(["model", "dataset"], sort=True):
        base = {
            "model": str(model), "dataset": str(dataset), "n_questions": int(group["index"].nunique()),
            "n_repeats": int(group["repeat"].nunique()), "failures": int((group["status"] != "ok").sum()),
            # Answers whose verdict failed: an LLM judge's request failed or its answer held no verdict, or a
            # program broke the scorer (`judge_error`); they count as wrong.
            "judge_failures": int(group["judge_error"].notna().sum()) if "judge_error" in group else 0,
        }
        if (base["model"], base["dataset"]) in errors:
            rows.append({**base, "metric": "scoring failed", "error": errors[(base["model"], base["dataset"])]})
            continue
        sample_rows = _summarize_group(group, ks) if _has_right_and_wrong(group) else []
        own = {r["metric"]: r["value"] for r in sample_rows}
        mine = evaluator_rows[(evaluator_rows["model"] == base["model"])
                              & (evaluator_rows["dataset"] == base["dataset"])]
        theirs = {str(r.metric): float(r.value) for r in mine.itertuples(index=False)}
        clash = _disagreement(own, theirs)
        if clash:
            rows.append({**base, "metric": "scoring failed", "error": clash})
            continue
        rows += [{**base, **row, "source": "samples"} for row in sample_rows]
        # A number that is the samples' own metric under the same name (MATHEvaluator's `accuracy`) is
        # reported once, with its CI; every other evaluator number as the evaluator gives it.
        rows += [{**base, "metric": name, "value": value, "source": "evaluator"}
                 for name, value in theirs.items() if name not in own]
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def _disagreement(own: dict[str, float], theirs: dict[str, float]) -> str | None:
    """Why the per-sample verdicts don't reproduce a same-named evaluator number (as a fraction or percentage),
    or None. They always should: a difference means the samples were judged differently from the evaluator."""
    for name in own.keys() & theirs.keys():
        if not any(math.isclose(own[name] * scale, theirs[name], rel_tol=1e-9, abs_tol=1e-9) for scale in (1, 100)):
            return f"per-sample verdicts give {name} {own[name]:.6g}, the evaluator {theirs[name]:.6g}"
    return None


def _has_right_and_wrong(group: pd.DataFrame) -> bool:
    """Whether the evaluator decided right/wrong for the group's answered samples (not e.g. a ROUGE score)."""
    ok = group[group["status"] == "ok"]
    return ok.empty or bool(ok["correct"].notna().all())


def _summarize_group(group: pd.DataFrame, ks: Sequence[int] | None) -> list[dict]:
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
    rows = []
    for metric, values in per_question.items():
        low, high = bootstrap_ci(values)
        rows.append(
            {"metric": metric, "value": float(values.mean()), "stderr": standard_error(values),
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
    """Percentile bootstrap CI of the mean (`scipy.stats.bootstrap`), resampling questions with a fixed seed (same
    input, same CI)."""
    if len(values) == 0:
        return math.nan, math.nan
    if len(values) == 1 or np.all(values == values[0]):  # every resample is the same: scipy refuses the degenerate case
        return float(values[0]), float(values[0])
    result = stats.bootstrap((np.asarray(values, dtype=float),), np.mean, n_resamples=n_resamples,
                             confidence_level=confidence, method="percentile", vectorized=True,
                             batch=max(1, 2_000_000 // len(values)),  # bounded memory for large datasets
                             random_state=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)
