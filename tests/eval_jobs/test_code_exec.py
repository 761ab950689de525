"""Generated programs that hang, crash, kill their scorer or allocate too much, through AISBench's real code
evaluator (mbpp's MBPPPassKEvaluator): each is that sample's failed verdict, the others keep theirs, nothing
reaches the test process."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from eval_jobs import dataset_configs as dc
from eval_jobs import datasets as ds
from eval_jobs.code_exec import ExecutionFailure, bounded_call
from eval_jobs.judge import judge

MBPP = "mbpp_passk_gen_3_shot_chat_prompt"
SOLVES = "def add(a, b):\n    return a + b"
PROGRAMS = {
    "solves": SOLVES,
    "wrong": "def add(a, b):\n    return a - b",
    "hangs": "def add(a, b):\n    while True:\n        pass",
    # Its process dies without a result: mbpp's `execution` then raises IndexError (key[0]) and the score() fails.
    "segfaults": "import ctypes\nctypes.string_at(0)",
    "allocates 64 GiB": "x = bytearray(64 * 1024**3)",
    # Kills the evaluator's pool worker: its process pool breaks, and today the whole dataset fails to score.
    "kills its parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
    # Signals its whole process group: without a group of its own, the scorer (the driver) would die with it.
    "kills its group": "import os, signal\nos.killpg(0, signal.SIGKILL)",
}


@pytest.fixture(scope="module")
def mbpp(tmp_path_factory) -> ds.EvalDataset:
    """The mbpp config on invented rows in MBPPDatasetV2's format: 10 few-shot rows, then one test row per program."""
    root = tmp_path_factory.mktemp("mbpp")
    dcfg = dc._dataset_dicts(dc.resolve_config(MBPP))[0]
    path = root / dcfg["path"]
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"task_id": i, "text": "Write a function add(a, b) that returns a + b.", "code": SOLVES,
             "test_list": ["assert add(2, 3) == 5"], "test_setup_code": "", "challenge_test_list": []}
            for i in range(10 + len(PROGRAMS))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dataset = ds.load_dataset(MBPP, root)
    assert len(dataset) == len(PROGRAMS)
    return dataset


def test_every_program_gets_its_own_verdict_and_the_scorer_survives(mbpp):
    answers = [f"```python\n{code}\n```" for code in PROGRAMS.values()]
    started = time.monotonic()
    judgement = judge(mbpp, answers, list(range(len(answers))))
    verdicts = dict(zip(PROGRAMS, judgement.verdicts))
    assert verdicts["solves"].correct is True and verdicts["solves"].reason is None
    for name in PROGRAMS.keys() - {"solves"}:
        assert verdicts[name].correct is False, name
    # Those that take the scorer down are singled out, with the reason; the evaluator judges the rest itself (the
    # hang is its own 'timeout', the allocation a MemoryError under the bound, so its 'failed').
    assert "killed by SIGKILL" in verdicts["kills its group"].reason
    for name in ("kills its parent", "segfaults"):
        assert verdicts[name].reason.startswith("the program broke the scoring"), name
    assert {n for n, v in verdicts.items() if v.reason} == {"kills its group", "kills its parent", "segfaults"}
    # The evaluator's own numbers, over the answers that did not break it (those count as empty: failed).
    assert judgement.metrics["pass@1"] == pytest.approx(100 / len(PROGRAMS))
    assert os.getpgid(0) == os.getpgid(os.getpid())  # still here, in our own group
    print(f"judged {len(PROGRAMS)} programs in {time.monotonic() - started:.1f} s")


def test_a_call_that_hangs_is_stopped_at_its_bound():
    with pytest.raises(ExecutionFailure, match="no result within 2 s"):
        bounded_call(lambda: time.sleep(3600), timeout_s=2)


def test_memory_beyond_the_budget_is_refused_in_the_child():
    with pytest.raises(ExecutionFailure, match="out of memory"):
        bounded_call(lambda: len(bytearray(8 * 1024**3)), timeout_s=60, memory_bytes=256 * 1024**2)
    assert bounded_call(lambda: len(bytearray(16 * 1024**2)), timeout_s=60, memory_bytes=256 * 1024**2) == 16 * 1024**2


def test_the_callers_exception_comes_back_as_itself(tmp_path: Path):
    def fails():
        raise KeyError("the evaluator's own error")

    with pytest.raises(KeyError, match="the evaluator's own error"):
        bounded_call(fails, timeout_s=60)


def _gone_or_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_result_comes_back_while_a_process_left_behind_holds_the_pipe():
    """A process the callee leaves running inherits the result pipe; the result is read to its length, not to the
    pipe's end, so it comes back (before, the call waited for its bound and failed), and the leftover is killed."""
    def leaves_a_process_behind() -> int:
        pid = os.fork()
        if pid == 0:
            time.sleep(3600)
            os._exit(0)
        return pid

    leftover = bounded_call(leaves_a_process_behind, timeout_s=30)
    deadline = time.monotonic() + 30
    while not _gone_or_zombie(leftover) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone_or_zombie(leftover)
