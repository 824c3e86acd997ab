"""Progress events of long operations, reported while the work runs."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from snapd_daemon.fsutil import tree_size
from snapd_daemon.poller import Poller


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


class DirectoryGrowth(Poller):
    """Reports the growing size of a directory as progress of ``phase`` until exited."""

    def __init__(self, report: Reporter, phase: Phase, path: Path, total: int, interval: float = 0.25) -> None:
        super().__init__(f"progress-{phase.value}", interval)
        self._report = report
        self._phase = phase
        self._path = path
        self._total = total

    def poll(self) -> bool:
        done = tree_size(self._path)
        self._report(ProgressEvent(self._phase, done, max(self._total, done)))
        return True
