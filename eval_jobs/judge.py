"""Judging: AISBench's own evaluator decides every sample and gives the dataset-level numbers.

    judgement = judge(dataset, ["... \\\\boxed{70}", "I think 12"], indices=[0, 1])
    judgement.verdicts   # [Verdict(correct=True, score=100.0, extracted="70"), Verdict(False, 0.0, "Ithink12")]
    judgement.metrics    # {"accuracy": 50.0}: the evaluator's own score() over these samples, every key

Predictions go through the postprocessors in the order OpenICLEvalTask._score applies them (the model config's
`pred_postprocessor`, i.e. `extract_non_reasoning_content` for vllm_api_general_chat, then the dataset's
`eval_cfg.pred_postprocessor`, then the evaluator's own); references through `eval_cfg.dataset_postprocessor`.
One `score()` call over all the samples gives the dataset-level numbers exactly as AISBench computes them
(ROUGE, BLEU and the like are not means of per-sample values). Per sample: the evaluator's `details` when it
returns them with a correctness key; otherwise (AccEvaluator, RougeEvaluator, ...) the evaluator is asked about
each sample alone, which is how it decides that sample (`score` = its first metric, `correct` where that metric
is an accuracy, i.e. 0 or full for one sample).
"""

from __future__ import annotations

import copy
import inspect
import math
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cluster.errors import ConfigError
from eval_jobs.code_exec import ExecutionFailure, bound_for, bounded_call, runs_code
from eval_jobs.datasets import EvalDataset

# Keys BaseEvaluator.evaluate looks for, in its order, to read a detail's correctness.
CORRECT_KEYS = ("correct", "is_correct", "cascade_correct")
# Metric names whose one-sample value is right (full marks) or wrong (0): AccEvaluator's `accuracy`,
# LEvalEMEvaluator's `exact_match`, MBPPPassKEvaluator's `pass@1`. Not `score`: LongBench's F1/ROUGE evaluators
# call theirs that too.
BINARY_METRIC_NAMES = ("accuracy", "acc", "exact_match", "em", "pass@1")
# Evaluators whose details hold only the samples they judged wrong, each by the row's `id` (AISBench's BFCL ones).
FAILED_ONLY_DETAILS = ("BFCLSingleTurnEvaluator", "BFCLRelevanceEvaluator", "BFCLMultiTurnEvaluator")


@dataclass(frozen=True)
class Verdict:
    """One sample as its evaluator judged it. `correct` is None when the evaluator has no right/wrong for a
    sample (ROUGE, F1, edit similarity: `score` carries its value instead)."""

    correct: bool | None
    score: float | None
    extracted: str
    reason: str | None = None  # why the sample failed without the evaluator's say (its program crashed the scorer)


@dataclass(frozen=True)
class Judgement:
    verdicts: list[Verdict]  # `score` is 1/0 where `correct` is set, else the evaluator's own value
    metrics: dict[str, float]  # the evaluator's score() over all judged samples: AISBench's names and scale


class ScoringError(RuntimeError):
    """A dataset whose samples its evaluator could not score; the message says why."""


def judge(dataset: EvalDataset, predictions: Sequence[str], indices: Sequence[int]) -> Judgement:
    """Judge `predictions[j]` (raw response text) against row `indices[j]` with the dataset's AISBench evaluator.

    For AISBench's dataset-level numbers pass one repeat's predictions for rows in order (AISBench scores each
    repeat separately). A prediction holding reasoning (`reasoning + "</think>" + content`, as AISBench's client
    builds it) is judged on the content only.
    """
    if len(predictions) != len(indices):
        raise ValueError(f"{len(predictions)} predictions but {len(indices)} indices")
    if not predictions:
        return Judgement([], {})
    eval_cfg = copy.deepcopy(dataset.eval_cfg)
    if "evaluator" not in eval_cfg:
        raise ConfigError(f"{dataset.config_path}: dataset {dataset.name!r}: eval_cfg has no evaluator")
    references = _references(dataset, eval_cfg)
    preds: list[Any] = list(predictions)
    if dataset.function_calls is not None:  # BFCL: the stored JSON of what AISBench's output handler stores
        from eval_jobs.function_calls import prediction_of

        preds = [prediction_of(p, dataset.rows[i]["id"]) for p, i in zip(preds, indices)]
    for cfg in (dataset.model_pred_postprocessor, eval_cfg.get("pred_postprocessor")):
        if cfg:
            preds = _postprocess(cfg, preds)
    evaluator = build_evaluator(eval_cfg["evaluator"])
    preds = evaluator.pred_postprocess(preds)  # BaseEvaluator.evaluate applies this per replica
    rows = list(indices)

    bad: dict[int, str] = {}
    if runs_code(evaluator):
        result, bad = _score_programs(dataset, evaluator, preds, rows, references)
    else:
        result = _score(dataset, evaluator, preds, rows, references)
    metrics = _numbers(result)
    details = result.get("details")
    if isinstance(details, dict):  # some evaluators key details by str(index); evaluate() takes values()
        details = list(details.values())
    if _has_correctness(details, len(preds)):
        _check_order(dataset.name, details, [references[i] for i in rows])
        verdicts = [_from_detail(d, preds[j]) for j, d in enumerate(details)]
    elif _type_of(eval_cfg["evaluator"]) in FAILED_ONLY_DETAILS:
        verdicts = _from_failed_ids(dataset, details, preds, rows)
    else:
        verdicts = [_alone(dataset, evaluator, preds[j], i, references) if j not in bad else None
                    for j, i in enumerate(rows)]
    for j, reason in bad.items():
        verdicts[j] = Verdict(False, 0.0, _text(preds[j]), reason=reason)
    return Judgement(verdicts, metrics)


def _score_programs(dataset: EvalDataset, evaluator: Any, preds: list[Any], rows: list[int],
                    references: list[Any]) -> tuple[dict, dict[int, str]]:
    """score() of an evaluator that runs the programs, bounded (eval_jobs/code_exec.py). When the call over all
    samples fails and the same call with every answer empty does not, the programs are at fault: bisection finds
    the answers that make it fail (each half scored alone, as `_alone` scores one sample), those are failed verdicts
    with the reason, and the rest is scored without them (their answers empty, as failed samples are scored). Returns (score() result, sample position -> reason)."""
    def run(kept: set[int]) -> dict:
        """score() over every sample, those not kept with an empty answer."""
        attempt = [p if j in kept else "" for j, p in enumerate(preds)]
        return bounded_call(lambda: _score(dataset, evaluator, attempt, rows, references),
                            timeout_s=bound_for(len(preds)))

    def run_alone(positions: list[int]) -> None:
        """score() over the samples at `positions` only, bounded for that many programs: a program that wedges
        the evaluator (one that kills its pool worker leaves mbpp's process pool waiting forever) costs the bound
        of its own sub-batch, not that of the whole dataset."""
        bounded_call(lambda: _score(dataset, evaluator, [preds[j] for j in positions], [rows[j] for j in positions],
                                    references), timeout_s=bound_for(len(positions)))

    everything = set(range(len(preds)))
    try:
        return run(everything), {}
    except (ExecutionFailure, ScoringError) as exc:
        first = exc
    try:
        run(set())
    except (ExecutionFailure, ScoringError):
        raise ScoringError(str(first)) from None  # the evaluator fails on its own: not a program's doing

    def culprits(positions: list[int], failure: Exception) -> dict[int, str]:
        """The answers among `positions`, whose call is known to fail with `failure`, that make it fail. Only the
        halves are run: running a known failure again costs every slow program in it once more."""
        if len(positions) == 1:
            return {positions[0]: f"the program broke the scoring: {failure}"}
        found: dict[int, str] = {}
        middle = len(positions) // 2
        for half in (positions[:middle], positions[middle:]):
            try:
                run_alone(half)
            except (ExecutionFailure, ScoringError) as exc:
                found |= culprits(half, exc)
        return found

    bad = culprits(sorted(everything), first)
    if not bad:  # only all of them together fail: nothing to single out
        raise ScoringError(str(first))
    return run(everything - bad.keys()), bad


def build_evaluator(evaluator_cfg: dict[str, Any]) -> Any:
    from ais_bench.benchmark.registry import ICL_EVALUATORS

    return ICL_EVALUATORS.build(copy.deepcopy(evaluator_cfg))


def _score(dataset: EvalDataset, evaluator: Any, preds: list[Any], rows: list[int], references: list[Any]) -> dict:
    """One evaluator.score() call over rows `rows`, with the arguments OpenICLEvalTask would pass it."""
    available: dict[str, Any] = {
        "predictions": preds,
        "references": [references[i] for i in rows],
        "origin_prompt": [dataset.messages[i] for i in rows],
        # GenInferencer stores each row's answer column as `gold` in the predictions; some evaluators take it.
        "gold": [dataset.references[i] for i in rows],
    }
    params = inspect.signature(evaluator.score).parameters
    if "test_set" in params:
        from datasets import Dataset

        # AISBench hands evaluators the test set with dataset_postprocessor applied to the answer column.
        column = dataset.output_column
        test_rows = [dict(dataset.rows[i], **({column: references[i]} if column else {})) for i in rows]
        available["test_set"] = Dataset.from_list(test_rows)
    required = [p for p, s in params.items() if s.default is inspect.Parameter.empty and p not in available]
    if required:
        raise ScoringError(f"evaluator {type(evaluator).__name__} needs {required} to score: not supported")
    try:
        # OpenICLEvalTask gives every evaluator its results directory as `_out_dir` before scoring; some write side
        # files there (OmniDocBench's matched elements per page). Here a scratch directory, gone after the call:
        # what counts is in the returned numbers and the run's per-sample store.
        with tempfile.TemporaryDirectory(prefix="evalcluster-eval-out-") as out_dir:
            evaluator._out_dir = out_dir
            result = evaluator.score(**{p: v for p, v in available.items() if p in params})
    except Exception as exc:
        raise ScoringError(f"evaluator {type(evaluator).__name__} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(result, dict):
        raise ScoringError(f"evaluator {type(evaluator).__name__} returned {type(result).__name__}, not a dict")
    if "error" in result:
        raise ScoringError(f"evaluator {type(evaluator).__name__} error: {result['error']}")
    return result


def _type_of(evaluator_cfg: dict[str, Any]) -> str:
    kind = evaluator_cfg.get("type")
    return (kind if isinstance(kind, str) else getattr(kind, "__name__", "")).rsplit(".", 1)[-1]


def _from_failed_ids(dataset: EvalDataset, details: Any, preds: list[Any], rows: list[int]) -> list[Verdict]:
    """Verdicts of an evaluator whose details list only the samples it failed, each by its row's `id` (BFCL's):
    a sample is right unless its id is among them. Ids must be unique among the rows scored."""
    ids = [dataset.rows[i]["id"] for i in rows]
    if len(set(ids)) != len(ids):
        raise ScoringError(f"{dataset.name}: rows share ids: failed samples cannot be told apart")
    failed = {d.get("id") for d in details or [] if isinstance(d, dict)}
    unknown = failed - set(ids)
    if unknown:
        raise ScoringError(f"{dataset.name}: evaluator details name ids not scored: {sorted(unknown)[:5]}")
    return [Verdict(sample_id not in failed, float(sample_id not in failed), _text(preds[j]))
            for j, sample_id in enumerate(ids)]


def _has_correctness(details: Any, n: int) -> bool:
    return (
        isinstance(details, list) and len(details) == n
        and all(isinstance(d, dict) and any(k in d for k in CORRECT_KEYS) for d in details)
    )


def _from_detail(detail: dict[str, Any], pred: Any) -> Verdict:
    correct = bool(detail[next(k for k in CORRECT_KEYS if k in detail)])
    return Verdict(correct, float(correct), _text(detail.get("pred", pred)))


def _alone(dataset: EvalDataset, evaluator: Any, pred: Any, row: int, references: list[Any]) -> Verdict:
    """The evaluator's decision on one sample: score() over that sample alone."""
    if runs_code(evaluator):
        try:
            result = bounded_call(lambda: _score(dataset, evaluator, [pred], [row], references),
                                  timeout_s=bound_for(1))
        except ExecutionFailure as exc:
            return Verdict(False, 0.0, _text(pred), reason=f"the program broke the scoring: {exc}")
    else:
        result = _score(dataset, evaluator, [pred], [row], references)
    numbers = list(_numbers(result).items())
    if not numbers:
        raise ScoringError(f"evaluator {type(evaluator).__name__} returned no numeric metric for one sample")
    # A right/wrong metric decides the sample wherever it comes (MBPPPassKEvaluator: counts first, then pass@1).
    name, value = next(((k, v) for k, v in numbers if k.lower() in BINARY_METRIC_NAMES), numbers[0])
    correct = None
    if name.lower() in BINARY_METRIC_NAMES:
        if value not in (0.0, 1.0, 100.0):
            raise ScoringError(f"evaluator {type(evaluator).__name__}: {name} = {value} for one sample")
        correct = value > 0
        value = float(correct)  # right/wrong samples score 1/0 whatever the evaluator's scale
    return Verdict(correct, value, _text(pred))


# HLEJudgeEvaluator reports its accuracy as text, with the half width of its 95% interval: "40.0% +/- 9.6%".
_PERCENT_WITH_CI = re.compile(r"^\s*(-?\d+(?:\.\d+)?)%\s*(?:\+/-\s*(\d+(?:\.\d+)?)%)?\s*$")


def _numbers(result: dict[str, Any]) -> dict[str, float]:
    """The numeric metrics of a score() result, in its order; a percentage written as text ("40.0% +/- 9.6%") is
    its number (40.0, on the evaluator's 0-100 scale), the interval's half width `<name> +/-` beside it."""
    numbers: dict[str, float] = {}
    for key, value in result.items():
        if _is_number(value):
            numbers[key] = float(value)
        elif isinstance(value, str) and (match := _PERCENT_WITH_CI.match(value)):
            numbers[key] = float(match.group(1))
            if match.group(2) is not None:
                numbers[f"{key} +/-"] = float(match.group(2))
    return numbers


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(float(value))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _check_order(name: str, details: list[dict[str, Any]], refs: list[Any]) -> None:
    """Details are taken as detail j = prediction j. Evaluators that echo the references verbatim
    (MATHEvaluator, Gsm8kEvaluator: detail['answer']) let us check it; others transform the reference
    (e.g. LEval's answer[1]) and are left unchecked."""
    echoed = [d.get("answer") for d in details]
    known = {repr(r) for r in refs}
    if any(a is None or repr(a) not in known for a in echoed):
        return
    for j, (answer, ref) in enumerate(zip(echoed, refs)):
        if repr(answer) != repr(ref):
            raise ScoringError(f"{name}: evaluator detail {j} has answer {answer!r}, expected {ref!r}: out of order")


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
