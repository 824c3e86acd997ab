"""Progress events of long operations, reported while the work runs."""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from snapd_daemon.util.fsutil import tree_size
from snapd_daemon.util.poller import Poller


class Phase(enum.Enum):
    VALIDATE = "validate"
    DUMP = "dump"
    COMMIT = "commit"
    STOP_SOURCE = "stop-source"
    PREPARE = "prepare"
    RESTORE = "restore"
    GPU_CHECKPOINT = "gpu-checkpoint"
    GPU_RESTORE = "gpu-restore"
    HOOK = "hook"
    INJECT = "inject"
    # restore: waiting for the snapshot's readiness probe, then checking its answer
    WAIT_READY = "wait-ready"
    VERIFY = "verify"
    # bytes moving to or from the remote tier (push; pull, also under a restore)
    UPLOAD = "upload"
    DOWNLOAD = "download"


@dataclass(frozen=True)
class ProgressEvent:
    phase: Phase
    bytes_done: int = 0
    bytes_total: int = 0
    message: str = ""
    # checkpoint: the tree cannot run while this event is current
    frozen: bool = False


Reporter = Callable[[ProgressEvent], None]


class Throttle:
    """A Reporter that passes on at most one event per ``interval`` seconds of a
    phase, but always the first of a phase, any with a message, and the one that
    completes it (``bytes_done == bytes_total``). The latest event held back is
    passed on before the next phase starts, and by ``flush`` (call it before
    the operation's result), so the last figure of a phase is never lost.

    Workers report once per chunk (thousands per second when restoring from
    RAM); each forwarded event costs a protobuf message on the stream and GIL
    time taken from those workers. Thread-safe.
    """

    def __init__(self, report: Reporter, interval: float = 0.1) -> None:
        self._report = report
        self._interval = interval
        self._lock = threading.Lock()
        self._phase: Phase | None = None
        self._last = 0.0
        self._held: ProgressEvent | None = None

    def __call__(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        with self._lock:
            if event.phase is not self._phase:
                self._pass_held()
            due = (event.phase is not self._phase or event.message or now - self._last >= self._interval
                   or event.bytes_done == event.bytes_total)
            if not due:
                self._held = event
                return
            self._held = None
            self._phase, self._last = event.phase, now
            self._report(event)

    def flush(self) -> None:
        with self._lock:
            self._pass_held()

    def _pass_held(self) -> None:
        if self._held is not None:
            self._report(self._held)
            self._held = None


class DirectoryGrowth(Poller):
    """Reports the growing size of a directory as progress of ``phase`` until exited."""

    def __init__(self, report: Reporter, phase: Phase, path: Path, total: int, interval: float = 0.25,
                 frozen: bool = False) -> None:
        super().__init__(f"progress-{phase.value}", interval)
        self._frozen = frozen
        self._report = report
        self._phase = phase
        self._path = path
        self._total = total

    def poll(self) -> bool:
        done = tree_size(self._path)
        self._report(ProgressEvent(self._phase, done, max(self._total, done), frozen=self._frozen))
        return True
