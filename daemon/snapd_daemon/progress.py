"""Progress events of long operations, reported while the work runs."""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from snapd_daemon.fsutil import tree_size


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


@dataclass(frozen=True)
class ProgressEvent:
    phase: Phase
    bytes_done: int = 0
    bytes_total: int = 0
    message: str = ""


Reporter = Callable[[ProgressEvent], None]


class DirectoryGrowth:
    """Reports the growing size of a directory as progress of ``phase`` until exited."""

    def __init__(self, report: Reporter, phase: Phase, path: Path, total: int, interval: float = 0.25) -> None:
        self._report = report
        self._phase = phase
        self._path = path
        self._total = total
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"progress-{phase.value}", daemon=True)

    def __enter__(self) -> DirectoryGrowth:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            done = tree_size(self._path)
            self._report(ProgressEvent(self._phase, done, max(self._total, done)))
