"""The order a post-copy fill (postcopy.py) takes its batches in, and which batch fills an address.

Batches are taken in address order from a cursor; a fault moves the cursor to the
batch that holds the faulting address, so that every fill thread follows a reader
walking the memory (the CUDA driver's thread reading the host copy of VRAM) and it
waits on few faults. While CRIU still restores, only the batches faults asked for are
taken (``sought``). Addresses are the checkpoint's, per image pid.
"""

from __future__ import annotations

import bisect
import threading

from snapd_daemon.restore.delivery import Route


class FillPlan:
    """Which batch fills each planned address (checkpoint addresses, per image pid), and
    the order batches are taken in: the first untaken one at or after the cursor."""

    def __init__(self, batches: list[list[Route]]) -> None:
        spans: dict[int, list[tuple[int, int, int]]] = {}
        for i, batch in enumerate(batches):
            for route in batch:
                for t in route.targets:
                    if t.pid:
                        spans.setdefault(t.pid, []).append((t.dest_offset, t.dest_offset + t.length, i))
        self.spans = {pid: sorted(s) for pid, s in spans.items()}
        self.starts = {pid: [s[0] for s in spans] for pid, spans in self.spans.items()}
        self.taken = bytearray(len(batches))
        self.cursor = 0
        self._sought: list[int] = []
        self._lock = threading.Lock()

    def batches_of(self, pid: int) -> set[int]:
        """The batches with memory of image pid ``pid``."""
        return {i for _, _, i in self.spans.get(pid, ())}

    def next(self) -> int:
        """The batch to take now (marked taken), or len(batches) when every one is taken."""
        with self._lock:
            i = self.taken.find(0, self.cursor)
            if i < 0:
                i = self.taken.find(0)
            if i < 0:
                return len(self.taken)
            self.taken[i] = 1
            self.cursor = i + 1
            return i

    def seek(self, i: int) -> None:
        """Take batch ``i``, or the first untaken one after it, next (then on, wrapping)."""
        with self._lock:
            self.cursor = i

    def want(self, i: int) -> None:
        """A fault asks for batch ``i`` (``sought`` gives it)."""
        with self._lock:
            self._sought.append(i)

    def untake(self, i: int) -> None:
        """Batch ``i`` is to be taken again (part of it could not be filled yet)."""
        with self._lock:
            self.taken[i] = 0

    def sought(self) -> int | None:
        """The last batch ``want`` asked for that is still untaken (marked taken), or None."""
        with self._lock:
            while self._sought:
                i = self._sought.pop()
                if not self.taken[i]:
                    self.taken[i] = 1
                    return i
            return None

    def batch_at(self, pid: int, address: int) -> int | None:
        """The batch that fills ``address`` of image pid ``pid``; None outside the plan."""
        k = bisect.bisect_right(self.starts.get(pid, []), address) - 1
        if k < 0:
            return None
        start, end, i = self.spans[pid][k]
        return i if address < end else None
