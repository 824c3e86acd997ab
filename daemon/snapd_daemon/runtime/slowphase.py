"""A step that runs past ``slow_phase_seconds`` says so in the log, with what the tree waits on.

``SlowPhase`` wraps a blocking step whose end the daemon cannot hurry (the CUDA
restore, the wait for a post-copy fill): once ``after`` seconds have passed, and
every ``after`` seconds from then, one warning line ``slow_phase`` names the
phase, the seconds so far, each thread of the processes ``pids()`` names with its
state, wchan and kernel stack (host/stacks.py), and ``figures()`` (what the step
can tell of its own progress). It only reads: the step is never interrupted, and
``after`` <= 0 watches nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

import structlog

from snapd_daemon.host import stacks
from snapd_daemon.util.poller import Poller

log = structlog.get_logger()


class SlowPhase(Poller):
    def __init__(self, phase: str, after: float, pids: Callable[[], list[int]],
                 figures: Callable[[], dict[str, object]] = dict) -> None:
        super().__init__(f"slow-{phase}", after)
        self.phase = phase
        self.watching = after > 0
        self.pids = pids
        self.figures = figures
        self.began = time.monotonic()

    def poll(self) -> bool:
        try:
            log.warning("slow_phase", phase=self.phase, seconds=round(time.monotonic() - self.began, 2),
                        threads=stacks.of_processes(self.pids()), **self.figures())
        except Exception as exc:  # a report that failed must not end the watching, nor the step
            log.error("slow_phase_unreadable", phase=self.phase, error=str(exc))
        return True

    def __enter__(self) -> Self:
        self.began = time.monotonic()
        return super().__enter__() if self.watching else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.watching:
            super().__exit__(exc_type, exc, tb)
