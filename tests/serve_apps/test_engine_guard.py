"""The engine guard: whatever way it ends, the engine it started does not outlive it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from cluster.net import free_port


def engine_child(guard: subprocess.Popen, port: int) -> int:
    """Pid of the simulated engine under `guard`, once it answers on `port`."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1, trust_env=False).status_code == 200:
                return int(subprocess.check_output(["pgrep", "-P", str(guard.pid)]).split()[0])
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError("simulated engine did not start under the guard")


def gone(pid: int, within_s: float = 10) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A zombie still answers kill(0); it no longer holds memory or the port.
        with open(f"/proc/{pid}/stat") as f:
            if f.read().split()[2] == "Z":
                return True
        time.sleep(0.1)
    return False


def test_engine_dies_with_a_sigkilled_guard():
    # SIGKILL leaves the guard no chance to end its group (Ray kills a dead worker's children so); the kernel
    # still tells the engine, which must not keep its memory and port.
    port = free_port()
    guard = subprocess.Popen([sys.executable, "-m", "serve_apps.engine_guard", "--", sys.executable, "-m",
                              "sim_engine", "--served-model-name", "g", "--port", str(port)])
    engine = engine_child(guard, port)
    try:
        guard.send_signal(signal.SIGKILL)
        guard.wait()
        assert gone(engine)
    finally:
        if not gone(engine, within_s=0):
            os.kill(engine, signal.SIGKILL)


def test_guard_removes_the_key_file_when_the_engine_ends(tmp_path):
    key_file = tmp_path / "engine.key"
    key_file.write_text("k")
    port = free_port()
    guard = subprocess.Popen([sys.executable, "-m", "serve_apps.engine_guard", "--remove-on-exit", str(key_file),
                              "--", sys.executable, "-m", "sim_engine", "--served-model-name", "g",
                              "--port", str(port)])
    engine = engine_child(guard, port)
    assert key_file.exists()  # kept while the engine runs: an operator reads it to talk to the engine directly
    os.kill(engine, signal.SIGKILL)
    guard.wait(timeout=30)  # the guard ends with its engine
    assert not key_file.exists()
