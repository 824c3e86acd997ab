"""A restore step blocked too long logs what the tree's threads wait on (runtime/slowphase.py,
host/stacks.py), read from /proc of real processes."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

from harness import wait_for
from snapd_daemon.host import stacks
from snapd_daemon.runtime.slowphase import SlowPhase


@pytest.fixture
def sleeper() -> Iterator[int]:
    proc = subprocess.Popen(["sleep", "60"])
    wait_for(lambda: any("nanosleep" in t.wchan for t in stacks.threads(proc.pid)), 30, "sleep to be in its nanosleep")
    yield proc.pid
    proc.kill()
    proc.wait()


def test_a_sleeping_thread_shows_where_it_waits_in_the_kernel(sleeper: int) -> None:
    [thread] = stacks.threads(sleeper)
    assert (thread.pid, thread.tid, thread.comm, thread.state) == (sleeper, sleeper, "sleep", "S")
    assert "nanosleep" in thread.wchan and any("nanosleep" in frame for frame in thread.stack)  # root reads stacks
    assert thread.line().startswith(f"{sleeper}/{sleeper} sleep S {thread.wchan} <- ")
    assert stacks.threads(2**22 + 1) == []  # no such process: nothing, no error


def test_a_step_past_its_time_logs_the_stacks_and_figures_until_it_ends(sleeper: int) -> None:
    with capture_logs() as logged:
        with SlowPhase("gpu-restore", 0.05, lambda: [sleeper], lambda: {"fill_bytes": 7}):
            time.sleep(0.4)
        seen = len(logged)
        time.sleep(0.15)
    assert seen >= 2 and len(logged) == seen  # every 0.05 s while the step ran, none after
    first = logged[0]
    assert (first["event"], first["phase"], first["fill_bytes"], first["log_level"]) == ("slow_phase", "gpu-restore",
                                                                                          7, "warning")
    assert first["seconds"] < logged[-1]["seconds"] and first["threads"][0].startswith(f"{sleeper}/")
    with capture_logs() as quiet, SlowPhase("fill", 0, lambda: [sleeper]):  # 0: never watched
        time.sleep(0.1)
    assert quiet == []
