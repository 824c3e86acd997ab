"""What a post-copy fill (postcopy.py) has done: its log lines, the restore's last progress
message (the bench reads it) and what a slow step reports (runtime/slowphase.py).

The fill's threads and the fault thread count at once, so ``filled`` and ``count``
take a lock; a reader gets a snapshot of figures (never used to decide anything).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class FillFigures:
    planned_bytes: int = 0
    filled_bytes: int = 0
    deferred: int = 0  # faults the fault thread retries (EAGAIN, or before the plan exists)
    began: float = 0.0  # monotonic; ended stays 0.0 while the fill runs
    ended: float = 0.0
    gpu_seconds: float = 0.0  # the CUDA restore's, and how much of it ran while the fill still ran
    overlap_seconds: float = 0.0
    counts: Counter[str] = field(default_factory=Counter)  # faults_*, events_*, retries_*
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def filled(self, n: int) -> None:
        with self._lock:
            self.filled_bytes += n

    def count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    def gpu_restore(self, began: float, ended: float) -> None:
        """The CUDA restore ran over [began, ended] (monotonic)."""
        self.gpu_seconds = ended - began
        self.overlap_seconds = max(0.0, min(ended, self.ended or time.monotonic()) - began)

    def progress(self) -> dict[str, object]:
        """Where the fill stands now."""
        with self._lock:
            counts = dict(sorted(self.counts.items()))
        return {"fill_bytes": self.filled_bytes, "planned_bytes": self.planned_bytes,
                "faults_deferred": self.deferred, "fill_running": bool(self.began and not self.ended), **counts}

    def summary(self) -> dict[str, object]:
        """The fill's figures once it ended (one log line: ``restore.postcopy``)."""
        seconds = self.ended - self.began if self.ended else 0.0
        return {"fill_seconds": round(seconds, 3),
                "fill_gbps": round(self.filled_bytes / seconds / 1e9, 2) if seconds else 0.0,
                **{k: v for k, v in self.progress().items() if k != "fill_running"},
                "gpu_restore_seconds": round(self.gpu_seconds, 3), "overlap_seconds": round(self.overlap_seconds, 3)}
