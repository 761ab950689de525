"""LLM-judged datasets (AISBench's `judge_infer_cfg`, e.g. aime2025_gen_0_shot_llmjudge): a second model, the judge
(`eval.judge`), reads each answer beside the question and the reference and says whether it is right.

    spec = judge_spec(dcfg, data_path)          # at load (datasets._build): what the judge stage needs, plain data
    requests = judge_requests(ds, judge, records, endpoint, identity)   # one judge request per answered sample
    frame = attach_judgements(frame, judge_records, datasets)          # + judge_response, judge_failure
    texts, failures = judge_answers(ds, rows)   # what the dataset's evaluator scores; failed judgements' reasons

It runs as AISBench's JudgeInfer worker (ais_bench/benchmark/cli/workers.py) and OpenICLEvalTask do, with their code:
- each answer becomes AISBench's prediction (`Output.get_prediction`: `reasoning</think>answer`), and the dataset's
  judge class (`judge_dataset_type`, e.g. Aime2025JDGDataset) merges the predictions with the data rows from a
  predictions file (`model_answer`, `model_pred_uuid`), as it reads `predictions/<model>/<abbr>.jsonl`;
- the judge prompt is rendered from those rows by the judge's own prompt template and retriever and the
  `judge_model` config's class (`eval_jobs.prompts.render`), and sent with the judge_model's max_out_len and
  generation_kwargs (`eval.judge.generation` wins), to `eval.judge.model`;
- the judge's answer is scored in place of the model's, by the dataset's `eval_cfg` (the run's model config
  `pred_postprocessor`, then e.g. `get_a_or_b`, then `LLMJudgeCorrectEvaluator`: "A" is right).

Judge requests are samples like any other: keys `(model, "<abbr>-<judge abbr>", index, repeat)` (AISBench's name
for the judge stage's dataset, `aime2025-judge`), sent by the same queue and client actors, appended to the same
store with a fingerprint of the judge prompt (the answer it judges included) and of the judge checkpoint; a rerun
sends only judgements that are missing, failed, or whose answer or judge changed.

Where AISBench reads a verdict out of an answer it cannot parse, it silently falls back (get_a_or_b: "B", wrong);
here that sample is a **failed judgement** with the reason (`judge_error` in the frame, `judge_failures` in the
summary), wrong as in AISBench. A judge request that failed, or a judgement still missing, is one too.

hle_llmjudge's judge answers in JSON (`"correct": "yes"`); HLEJudgeEvaluator gives no per-sample details and its
accuracy as text ("40.0% +/- 9.6%"): each sample's verdict is its score() over that sample alone, as for other
evaluators without details, and the text is read as its numbers (eval_jobs/judge.py). AISBench renders its judge
prompt with `{question}` unfilled, as HLEDataset's rows have no `question` column; so does evalcluster.

Not yet: gedit (LMMGenInferencer), sweeps (eval_jobs/sweep refuses judged datasets).
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from cluster.errors import ConfigError
from eval_jobs.fingerprint import sample_fingerprint
from eval_jobs.model_config import API_OF_CLASS, ModelConfig, checked_model_config
from eval_jobs.records import SampleKey, SampleRequest, SampleResult

if TYPE_CHECKING:
    from eval_jobs.config import JudgeConfig
    from eval_jobs.datasets import EvalDataset

_AIS = "ais_bench.benchmark."
GET_A_OR_B = _AIS + "datasets.utils.llm_judge.get_a_or_b"
HLE_EVALUATOR = _AIS + "datasets.hle.HLEJudgeEvaluator"
# What the judge stage adds to the per-sample frame of the judged datasets' samples.
JUDGE_COLUMNS = ["judge_response", "judge_failure"]


def judge_spec(dcfg: Any, data_path: Path | None) -> dict[str, Any] | None:
    """What the judge stage of dataset dict `dcfg` needs (None without `judge_infer_cfg`): the judge dataset's
    build config (the dataset's own, with AISBench's JudgeInfer replacements: `judge_dataset_type`,
    `judge_reader_cfg`), the judge's infer config, and its `judge_model` config, all plain data."""
    from eval_jobs.dataset_configs import _plain

    judge_cfg = dcfg.get("judge_infer_cfg")
    if not judge_cfg:
        return None
    dataset = {k: v for k, v in dcfg.items() if k not in ("infer_cfg", "judge_infer_cfg", "eval_cfg", "n", "k")}
    dataset["type"] = judge_cfg["judge_dataset_type"]
    dataset["reader_cfg"] = judge_cfg["judge_reader_cfg"]
    if data_path is not None and not isinstance(dcfg.get("data_files"), str):
        dataset["path"] = str(data_path)  # resolved against the run's data dir already
    infer_cfg = {k: v for k, v in judge_cfg.items()
                 if k not in ("judge_model", "judge_dataset_type", "judge_reader_cfg")}
    return _plain({"dataset": dataset, "infer_cfg": infer_cfg, "model": judge_cfg["judge_model"]})


def unsupported_judge(dcfg: Any) -> str | None:
    """Why evalcluster cannot run this dataset's judge (one line), or None."""
    from eval_jobs.dataset_configs import _type_name

    judge_cfg = dcfg.get("judge_infer_cfg") or {}
    kind = _type_name((judge_cfg.get("judge_model") or {}).get("type"))
    if kind not in API_OF_CLASS:  # evalcluster sends the judge's requests as it sends the answers'
        return f"judge_infer_cfg.judge_model {kind.rsplit('.', 1)[-1]}: not an OpenAI-compatible vLLM API model"
    if _verdict_check(dcfg.get("eval_cfg") or {}) is None:
        return "judge_infer_cfg whose verdict format evalcluster cannot check (known: get_a_or_b): not supported yet"
    return None


def judge_dataset_name(ds: EvalDataset) -> str:
    """The judge stage's dataset name, as AISBench names it (`<abbr>-<judge_model.abbr>`, e.g. aime2025-judge)."""
    return f"{ds.name}-{ds.llm_judge['model'].get('abbr') or 'judge'}"


def judge_model_config(ds: EvalDataset) -> ModelConfig:
    return checked_model_config(ds.llm_judge["model"], ds.config_path, "judge_infer_cfg.judge_model", embedded=True)


def aisbench_prediction(record: SampleResult) -> str:
    """The answer as AISBench's client stores it in its predictions (`Output.get_prediction`: the reasoning, then
    `</think>`, then the answer, when the server split them)."""
    from ais_bench.benchmark.models.output import RequestOutput

    output = RequestOutput(False)
    output.content = record.response
    output.reasoning_content = record.reasoning_content or ""
    return output.get_prediction()


class _NoTaskState:
    """AISBench's judge datasets report progress to a task state manager and fail without one
    (BaseJDGDataset._process_predictions); the driver has no task to report to."""

    def update_task_state(self, state: dict) -> None:
        pass


def render_judge_prompts(ds: EvalDataset, predictions: Sequence[tuple[int, str, str]]) -> dict[str, Any]:
    """uuid → the judge request's input (chat messages, or a completions prompt) for each (row index, uuid,
    prediction), rendered by AISBench: its judge dataset class merges the predictions file with the rows, then
    the judge's prompt template, retriever and judge_model class render it."""
    from ais_bench.benchmark.utils.config import build_dataset_from_cfg

    from eval_jobs.prompts import render

    if not predictions:
        return {}
    spec = ds.llm_judge
    with tempfile.TemporaryDirectory(prefix="evalcluster-judge-") as tmp:
        path = Path(tmp) / "predictions.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for index, uuid, text in predictions:
                f.write(json.dumps({"id": index, "uuid": uuid, "prediction": text}, ensure_ascii=False) + "\n")
        cfg = copy.deepcopy(spec["dataset"])
        cfg["predictions_path"] = str(path)
        try:
            built = build_dataset_from_cfg(cfg, task_state_manager=_NoTaskState())
        except Exception as exc:
            raise ConfigError(f"{ds.config_path}: dataset {ds.name!r}: AISBench could not build its judge "
                              f"dataset ({spec['dataset'].get('type')}): {exc}") from None
        inputs = render(built, spec["infer_cfg"], judge_model_config(ds))
        # The judge dataset comes back sorted by uuid: its output column says which prediction each row holds.
        uuids = built.test[built.reader.output_column]
    return dict(zip(uuids, inputs))


def _uuid(record: SampleResult) -> str:
    return json.dumps([record.model, record.index, record.repeat])


def judge_requests(ds: EvalDataset, judge: JudgeConfig, records: Sequence[SampleResult], endpoint: str,
                   identity: str) -> list[SampleRequest]:
    """One judge request per ok answer of dataset `ds` in `records` (failed answers are wrong without a judge),
    for `judge` (eval.judge) at `endpoint`, fingerprinted with the judge checkpoint's `identity`."""
    answered = [r for r in records if r.status == "ok"]
    inputs = render_judge_prompts(ds, [(r.index, _uuid(r), aisbench_prediction(r)) for r in answered])
    model = judge_model_config(ds)
    defaults = model.request_defaults()
    field = "prompt" if model.api == "completions" else "messages"
    name = judge_dataset_name(ds)
    requests = []
    for record in answered:
        body = {field: inputs[_uuid(record)], "model": judge.model,
                **judge.generation.request_fields(record.repeat, None, defaults)}
        request = SampleRequest(key=SampleKey(record.model, name, record.index, record.repeat), endpoint=endpoint,
                                body=body)
        # The judged answer's own fingerprint covers its data row and prompt; the body holds the answer itself.
        request.fingerprint = sample_fingerprint(body, {"answer": record.fingerprint}, identity)
        requests.append(request)
    return requests


def attach_judgements(frame: pd.DataFrame, judge_records: Sequence[SampleResult],
                      datasets: dict[str, EvalDataset]) -> pd.DataFrame:
    """The per-sample frame with, for every ok answer of an LLM-judged dataset, the judge's answer (as AISBench's
    prediction) or why there is none (`judge_failure`: its request failed, or it was never answered)."""
    frame = frame.copy()
    for column in JUDGE_COLUMNS:
        frame[column] = pd.Series(None, index=frame.index, dtype=object)
    judged = {judge_dataset_name(d): name for name, d in datasets.items() if d.llm_judge is not None}
    by_key = {(judged[r.dataset], r.model, r.index, r.repeat): r for r in judge_records if r.dataset in judged}
    for position, row in frame.iterrows():
        if row["dataset"] not in judged.values() or row["status"] != "ok":
            continue
        record = by_key.get((row["dataset"], row["model"], int(row["index"]), int(row["repeat"])))
        if record is None:
            frame.at[position, "judge_failure"] = "not judged: the run ended before the judge answered (run again)"
        elif record.status != "ok":
            frame.at[position, "judge_failure"] = f"the judge's request failed: {record.error}"
        else:
            frame.at[position, "judge_response"] = aisbench_prediction(record)
    return frame


def judge_answers(ds: EvalDataset, rows: pd.DataFrame) -> tuple[list[str], list[str | None]]:
    """For the model's answers `rows` (a frame after `attach_judgements`): the texts the dataset's evaluator scores
    (the judge's answers) and, per row, why the judgement failed (None when it did not). A failed or unjudged
    answer is scored as an empty one, as judge_frame scores failed answers; so is an answer cut inside its
    reasoning (eval_jobs/reasoning.py: never scored on its reasoning, whatever a judge made of it)."""
    from eval_jobs.judge import _postprocess

    cut = rows["cut_in_reasoning"] if "cut_in_reasoning" in rows else pd.Series(False, index=rows.index)
    check = _verdict_check(ds.eval_cfg)
    texts: list[str] = []
    failures: list[str | None] = []
    for status, response, failure, was_cut in zip(rows["status"], rows.get("judge_response", [None] * len(rows)),
                                                  rows.get("judge_failure", [None] * len(rows)), cut):
        if status != "ok" or bool(was_cut):
            texts.append("")
            failures.append(None)
        elif isinstance(failure, str) or not isinstance(response, str):  # (pandas may hold NaN for None)
            texts.append("")
            failures.append(failure if isinstance(failure, str) else "not judged: no judge answer")
        else:
            # What the dataset's postprocessor reads: after the run's model config postprocessor, as
            # OpenICLEvalTask applies it to the judge's predictions too.
            seen = _postprocess(ds.model_pred_postprocessor, [response])[0] if ds.model_pred_postprocessor \
                else response
            texts.append(response)
            failures.append(check(seen) if check else None)
    return texts, failures


def _verdict_check(eval_cfg: dict[str, Any]) -> Callable[[str], str | None] | None:
    """The function saying why a judge's answer holds no verdict this dataset's evaluator can read, if known."""
    from eval_jobs.dataset_configs import _type_name

    post = _type_name((eval_cfg.get("pred_postprocessor") or {}).get("type"))
    if post in (GET_A_OR_B, "get_a_or_b"):
        return _a_or_b_failure
    if _type_name((eval_cfg.get("evaluator") or {}).get("type")) == HLE_EVALUATOR:
        return _hle_failure
    return None


def _hle_failure(text: str) -> str | None:
    """HLEJudgeEvaluator reads the judge's answer as JSON (whitespace runs made one space) and counts it right when
    its `correct` holds "yes"; an answer it cannot parse it skips, which counts as wrong."""
    from ais_bench.benchmark.datasets.hle import parse_predictions

    parsed = parse_predictions([text])
    if not parsed:
        return f"judge answer not parsed: HLEJudgeEvaluator reads it as JSON, and it is not (it starts {text[:60]!r})"
    if not isinstance(parsed[0]["correct"], str):
        return f"judge answer not parsed: its JSON has no `correct` text (\"yes\" or \"no\"): {text[:60]!r}"
    return None


def _a_or_b_failure(text: str) -> str | None:
    """get_a_or_b reads the answer's last character, and returns "B" when it is neither A nor B: a verdict it read
    is the last character itself, anything else is its fallback."""
    from ais_bench.benchmark.datasets.utils.llm_judge import get_a_or_b

    if get_a_or_b(text) == text[-1:]:
        return None
    return (f"judge answer not parsed: get_a_or_b reads its last character, which is {text[-1:]!r}, not A or B "
            f"(the answer ends {text[-60:]!r})")

