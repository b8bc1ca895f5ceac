"""StallClock leaves out the time a process spends stopped (SIGSTOP), as another user's quiet-machine
measurement does to niced jobs, and nothing else."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from benchmarks.stall_clock import StallClock

CHILD = """
import sys, time
from benchmarks.stall_clock import StallClock
clock = StallClock(tick=0.01, threshold=0.1)
wall0, c0 = time.perf_counter(), clock.now()
print("ready", flush=True)
time.sleep(1.5)
print(time.perf_counter() - wall0, clock.now() - c0, clock.stalled, flush=True)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs POSIX signals")
def test_stopped_time_is_excluded():
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    child.send_signal(signal.SIGSTOP)
    time.sleep(0.8)
    child.send_signal(signal.SIGCONT)
    wall, measured, stalled = (float(x) for x in child.stdout.readline().split())
    child.wait(timeout=10)
    assert wall >= 1.5
    assert 0.5 < stalled < 1.0
    assert measured == pytest.approx(wall - stalled, abs=0.05)


def test_no_stall_no_correction():
    clock = StallClock(tick=0.01, threshold=0.2)
    t0, c0 = time.perf_counter(), clock.now()
    time.sleep(0.3)
    # on a quiet machine nothing is stalled; a starved one may see a little, but never the sleep itself
    assert clock.stalled < 0.15
    assert clock.now() - c0 == pytest.approx(time.perf_counter() - t0 - clock.stalled, abs=0.02)
    clock.close()
    with pytest.raises(ValueError):
        StallClock(tick=0.5, threshold=0.1)
