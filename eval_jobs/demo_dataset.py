"""The demo dataset: 50 short arithmetic word problems with small integer answers, in AISBench's JSONL format.

    python -m eval_jobs.demo_dataset [DATA_DIR]

writes `DATA_DIR/ais_bench/datasets/demo_arith/demo_arith.jsonl` (AISBench's layout, as for aime2025), which
`configs/datasets/demo_arith_gen_0_shot_chat_prompt.py` reads with AISBench's own dataset class, prompt and
MATH evaluator. The problems come from fixed formulas (no RNG), so the file is the same bytes every time.
DATA_DIR defaults to where `load_dataset` looks: `$AIS_BENCH_DATASETS_CACHE` if set, else
`<evalcluster home>/datasets`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from eval_jobs.dataset_configs import default_data_dir

DEMO_NAME = "demo_arith"
DEMO_CONFIG = "demo_arith_gen_0_shot_chat_prompt"
RELATIVE_PATH = Path("ais_bench/datasets/demo_arith/demo_arith.jsonl")
N_PROBLEMS = 50

_NAMES = ["Tom", "Anna", "Ben", "Mia", "Sam", "Lily", "Omar", "Zoe", "Ravi", "Emma"]


def demo_problems() -> list[dict[str, str]]:
    """The 50 problems as {"question", "answer"}; answers are strings, as in AISBench's aime2025 file
    (MATHEvaluator compares strings: an int reference never equals a string prediction)."""
    problems = []
    for i in range(N_PROBLEMS):
        name = _NAMES[i % len(_NAMES)]
        a = 3 + (7 * i) % 9  # 3..11
        b = 2 + (5 * i) % 7  # 2..8
        kind = i % 5
        if kind == 0:
            question = f"{name} has {a} apples and buys {b} more. How many apples does {name} have?"
            answer = a + b
        elif kind == 1:
            question = f"{name} had {a + b} marbles and gave {b} of them away. How many marbles are left?"
            answer = a
        elif kind == 2:
            question = f"There are {a} boxes with {b} pencils in each box. How many pencils are there?"
            answer = a * b
        elif kind == 3:
            question = (
                f"{name} shares {a * b} candies equally among {b} friends. "
                "How many candies does each friend get?"
            )
            answer = a
        else:
            question = (
                f"{name} reads {a} pages on Monday, {b} pages on Tuesday and 1 page on Wednesday. "
                "How many pages does that make?"
            )
            answer = a + b + 1
        problems.append({"question": question, "answer": str(answer)})
    return problems


def write_demo_dataset(data_dir: str | Path) -> Path:
    """Write the demo JSONL under `data_dir` (AISBench layout) and return its path."""
    path = Path(data_dir) / RELATIVE_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in demo_problems())
    path.write_bytes(text.encode("utf-8"))
    return path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    data_dir = Path(args[0]) if args else default_data_dir()
    path = write_demo_dataset(data_dir)
    print(f"wrote {N_PROBLEMS} problems to {path} (dataset config: {DEMO_CONFIG})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
