"""`python -m serve_apps.engine_guard [--remove-on-exit FILE] -- ENGINE ARGV...`: runs the engine and takes its
whole process group with it.

vLLM's API server starts an engine-core process and workers of its own. When the API server dies (killed, or
sent SIGTERM because its supervisor replica died), those grandchildren are re-parented to init and keep their
memory and ports (seen here). The guard leads a process group holding all of them and, whenever it ends (the
engine exited, the supervisor died, or it was asked to stop), it terminates the whole group: TERM, a grace
period, then KILL. Its exit code is the engine's. It also deletes the files given with --remove-on-exit (the
engine's key file) once the engine is gone.

The supervisor starts the guard without a preexec_fn (it runs in a multithreaded Ray worker, where that can
deadlock); what must happen between fork and exec happens here instead, in a single-threaded process.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

GRACE_S = 10.0
PR_SET_PDEATHSIG = 1


def _end_group(engine: subprocess.Popen, code: int, remove: list[str]) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group TERM below reaches the guard too
    try:
        os.killpg(0, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        while not _exited(engine) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # the engine's own children exit right after it
    finally:
        sys.stdout.flush()
        if _others_left():
            os.killpg(0, signal.SIGKILL)
        for path in remove:
            with contextlib.suppress(OSError):
                os.unlink(path)
        os._exit(code)


def _exited(engine: subprocess.Popen) -> bool:
    """Whether the engine has exited. Not `engine.poll()`: this runs in a signal handler that may have interrupted
    `engine.wait()`, which holds the Popen's lock, and poll() then answers None until the lock is free."""
    try:
        pid, _ = os.waitpid(engine.pid, os.WNOHANG)
    except ChildProcessError:
        return True  # reaped already
    return pid != 0


def _others_left() -> bool:
    """Whether any process of our group besides the guard is still there."""
    me, group = os.getpid(), os.getpgid(0)
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me:
            try:
                if os.getpgid(int(entry)) == group:
                    return True
            except OSError:
                continue
    return False


def _term_when_parent_dies() -> None:
    """Ask the kernel for SIGTERM when this process's parent dies; exit at once if it already has."""
    parent = os.getppid()
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the line above took effect
        os._exit(1)


def _lower_niceness() -> None:
    """Drop Ray's worker niceness where allowed (the engine is the real work); inherited by the engine."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 0)
    except OSError:
        pass  # lowering niceness needs privileges; the engine then runs at Ray's worker priority


def parse(argv: list[str]) -> tuple[list[str], list[str]]:
    """(files to remove on exit, the engine's argv)."""
    remove: list[str] = []
    while len(argv) >= 2 and argv[0] == "--remove-on-exit":
        remove.append(argv[1])
        argv = argv[2:]
    if not argv or argv[0] != "--" or len(argv) < 2:
        sys.exit("usage: python -m serve_apps.engine_guard [--remove-on-exit FILE]... -- ENGINE ARGV...")
    return remove, argv[1:]


def main(argv: list[str]) -> None:
    remove, engine_argv = parse(argv)
    if os.getpgid(0) != os.getpid():
        os.setsid()  # lead our own group, so killpg(0) never reaches the supervisor
    _lower_niceness()
    # Our parent is the supervisor replica: if it dies, the kernel tells us with SIGTERM.
    _term_when_parent_dies()
    # And the engine is told when we die: SIGKILL gives us no chance to end the group (Ray kills a dead worker's
    # children that way), and an engine left behind keeps its memory and port (seen in the fault tests). A
    # preexec_fn is safe here: the guard has a single thread.
    engine = subprocess.Popen(engine_argv, preexec_fn=_term_when_parent_dies)
    signal.signal(signal.SIGTERM, lambda *_: _end_group(engine, 143, remove))
    signal.signal(signal.SIGINT, lambda *_: _end_group(engine, 130, remove))
    code = engine.wait()
    _end_group(engine, code, remove)


if __name__ == "__main__":
    main(sys.argv[1:])
