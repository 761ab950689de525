"""Evaluators that run the generated code (humaneval, mbpp, livecodebench), bounded in time and memory.

    if runs_code(evaluator):
        result = bounded_call(lambda: evaluator.score(...), timeout_s=bound_for(len(preds)))
        # raises ExecutionFailure("killed by SIGSEGV" / "no result within 40 s" / ...) instead of taking the driver down

AISBench's code evaluators execute each program in a child process of the scoring process with a per-program
time limit of their own (human-eval 3 s, mbpp 10 s, livecodebench its tests' limits), but no memory limit, and
some of what a generated program can do reaches the scorer itself: a program that allocates 50 GB makes the
machine swap or wakes the OOM killer (which may pick the driver, or an engine), one that kills its parent
(`os.kill(os.getppid(), 9)`) breaks mbpp's process pool so the whole dataset fails to score, one that calls
`os.killpg(0, ...)` signals the driver's process group. So the evaluator's `score()` runs in a forked child
(fork, not spawn: AISBench and the evaluator are already imported, a spawned child would import them again,
7-12 s) that is the leader of its own process group, with `RLIMIT_AS` set to what the driver's address space
already holds plus `MEMORY_BUDGET_BYTES` (the limit is inherited by every program the evaluator starts, so each
gets that much beyond what it shares with the driver), and a wall-clock bound after which the whole group is
killed. `judge` then scores the dataset sample by sample, each bounded the same way, when the call over all of
them fails: a program that hangs, crashes or runs out of memory is that sample's failed verdict with its reason,
and the others keep theirs.

This bounds mistakes, it is not a security sandbox: the program runs as the driver's user, with its files and
network. Run untrusted models' code on a machine you can lose.
"""

from __future__ import annotations

import os
import pickle
import resource
import signal
import time
from collections.abc import Callable
from typing import Any

_AIS = "ais_bench.benchmark."
CODE_EVALUATORS = {
    _AIS + "datasets.humaneval.HumanEvalEvaluator",
    _AIS + "datasets.humaneval.HumanEvalPlusEvaluator",
    _AIS + "datasets.mbpp.MBPPEvaluator",
    _AIS + "datasets.mbpp.MBPPEvaluator2",
    _AIS + "datasets.mbpp.MBPPPassKEvaluator",
    _AIS + "datasets.livecodebench.evaluator.LCBCodeGenerationEvaluator",
    _AIS + "datasets.livecodebench.evaluator.LCBCodeExecutionEvaluator",
    _AIS + "datasets.livecodebench.evaluator.LCBTestOutputEvaluator",
    _AIS + "datasets.humanevalx.humanevalx.HumanevalXEvaluator",
}
# Address space each program (and the scorer) may take beyond what it shares with the driver when forked.
MEMORY_BUDGET_BYTES = 2 * 1024**3
# Bound on one score() call: a fixed start plus a share per program. The child is forked with the evaluator
# imported, so the start is its process pool's (0.1-0.9 s measured on a loaded 2-core machine); 20 s leaves ample
# room and keeps what a program that wedges the evaluator costs (the whole bound) small. Each evaluator's own
# per-program limit is at most 10 s (mbpp); several programs run at once, so 10 s each is ample.
BASE_TIMEOUT_S = 20.0
PER_PROGRAM_TIMEOUT_S = 10.0
MAX_RESULT_BYTES = 512 * 1024**2
_LENGTH_BYTES = 8  # the result message's length prefix
_EXIT_POLL_S = 0.1  # how often a waiting parent checks whether the child has ended


class ExecutionFailure(RuntimeError):
    """The bounded call produced no result; the message says why (timeout, signal, exit code, memory)."""


def runs_code(evaluator: Any) -> bool:
    cls = type(evaluator)
    return any(f"{c.__module__}.{c.__qualname__}" in CODE_EVALUATORS for c in cls.__mro__)


def bound_for(programs: int) -> float:
    return BASE_TIMEOUT_S + PER_PROGRAM_TIMEOUT_S * programs


def bounded_call(fn: Callable[[], Any], *, timeout_s: float, memory_bytes: int = MEMORY_BUDGET_BYTES) -> Any:
    """`fn()` in a forked child of its own process group, its address space bounded at the caller's current size
    plus `memory_bytes`, the whole group killed after `timeout_s`. Returns fn's result or re-raises its exception;
    raises ExecutionFailure when the child ends without either."""
    read_fd, write_fd = os.pipe()
    limit = _address_space_bytes() + memory_bytes
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_fd)
        code = 0
        try:
            os.setpgid(0, 0)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            try:
                payload = pickle.dumps(("ok", fn()))
            except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
                try:
                    payload = pickle.dumps(("error", exc))
                except Exception:
                    payload = pickle.dumps(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))
            with os.fdopen(write_fd, "wb") as out:
                out.write(len(payload).to_bytes(_LENGTH_BYTES, "big") + payload)
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)  # no atexit handlers, no Ray shutdown hooks: they belong to the driver
    os.close(write_fd)
    status = None
    try:
        data, status = _read_result(read_fd, pid, time.monotonic() + timeout_s)
    finally:
        os.close(read_fd)
        _kill_group(pid)
        if status is None:
            status = _reap(pid)
    if data is None:
        raise ExecutionFailure(f"no result within {timeout_s:g} s (the program hung or ran too long)")
    if not data:
        raise ExecutionFailure(_how_it_ended(status, limit))
    kind, value = pickle.loads(data)
    if kind == "error":
        if isinstance(value, MemoryError):
            raise ExecutionFailure(f"out of memory (limit {memory_bytes / 1024**3:g} GiB beyond the driver's)")
        raise value
    return value


def _read_result(fd: int, pid: int, deadline: float) -> tuple[bytes | None, int | None]:
    """The child's result message and, if it has ended meanwhile, its wait status; the message is None at the
    deadline, empty when the child ended without one.

    The message is length-prefixed and read to its length, not to end-of-file: every process the child forks
    inherits the pipe, and one left behind (mbpp's Manager server once a program killed the pool worker that
    started it) keeps the pipe open until the group is killed, which made each such call wait its whole bound.
    For the same reason the child's own exit, not end-of-file, says no message is coming."""
    import select

    buf, status = bytearray(), None
    while True:
        if len(buf) >= _LENGTH_BYTES:
            size = int.from_bytes(buf[:_LENGTH_BYTES], "big")
            if size > MAX_RESULT_BYTES:
                raise ExecutionFailure(f"result larger than {MAX_RESULT_BYTES} bytes")
            if len(buf) - _LENGTH_BYTES >= size:
                return bytes(buf[_LENGTH_BYTES:_LENGTH_BYTES + size]), status
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None, status
        # Once the child has ended, only what is already in the pipe can still come.
        wait_s = 0 if status is not None else min(remaining, _EXIT_POLL_S)
        ready, _, _ = select.select([fd], [], [], wait_s)
        if ready:
            chunk = os.read(fd, 1 << 20)
            if not chunk:  # every holder closed it: a partial message is no result
                return b"", status
            buf += chunk
            continue
        if status is not None:
            return b"", status
        done, wait_status = os.waitpid(pid, os.WNOHANG)
        if done:
            status = wait_status


def _kill_group(pid: int) -> None:
    """Kill the child's process group (the evaluator's workers and the programs they started)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:  # the group leader is gone and its id was reused: only the child itself is ours
        pass


def _reap(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return status


def _how_it_ended(status: int, limit: int) -> str:
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        return f"the scoring process was killed by {name} (a program crashed it, or killed its parent)"
    return f"the scoring process exited with code {os.WEXITSTATUS(status)} before giving a result"


def _address_space_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")
