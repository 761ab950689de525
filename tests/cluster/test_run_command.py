"""A command's stop signals: SIGINT and SIGTERM end it as Ctrl-C does, however it was started."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

# The body says it runs only once run_command has its handlers, then waits to be stopped.
COMMAND = ("import sys, time\nfrom cluster.errors import run_command\n"
           "sys.exit(run_command(lambda: print('running', flush=True) or time.sleep(60) or 0))\n")


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_a_command_started_with_sigint_ignored_still_stops_on_its_signals(stop):
    # What a shell without job control does to a background command (`cmd &` in a script): SIGINT ignored, which
    # Python keeps, so without run_command's handler `kill -INT` would leave the command running.
    proc = subprocess.Popen([sys.executable, "-c", COMMAND], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert proc.stdout.readline() == "running\n"
        proc.send_signal(stop)
        assert proc.wait(timeout=30) == 130
        assert "interrupted; an evaluation resumes when run again" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
