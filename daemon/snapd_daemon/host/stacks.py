"""What a process's threads are doing now, as the kernel sees it: for a phase that takes too long.

Per thread: its state letter (``/proc/PID/task/TID/stat``: R running, S sleeping,
D uninterruptible, T stopped, ...), ``wchan`` (the kernel function it waits in,
"0" when running) and its kernel stack (``stack``: root only, frames as
``function+offset/size``). A thread that ends while it is read is left out, a
file the kernel refuses (no root, a kernel without stacks) leaves its field
empty: reading never raises.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

MAX_FRAMES = 16  # of each stack, from the innermost: where it waits


@dataclass(frozen=True)
class ThreadState:
    pid: int
    tid: int
    comm: str
    state: str
    wchan: str
    stack: tuple[str, ...]

    def line(self) -> str:
        """One line: ``pid/tid comm state wchan <- frame <- frame ...``."""
        return " <- ".join([f"{self.pid}/{self.tid} {self.comm} {self.state} {self.wchan or '?'}", *self.stack])


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def threads(pid: int) -> list[ThreadState]:
    """The threads of ``pid`` (none when it is gone)."""
    try:
        tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return []
    found = []
    for tid in tids:
        base = f"/proc/{pid}/task/{tid}"
        stat = _read(f"{base}/stat")
        if not stat:
            continue
        comm = stat[stat.find("(") + 1 : stat.rfind(")")]
        state = stat[stat.rfind(")") + 2 :].split(" ", 1)[0]
        frames = [ln.split("] ", 1)[-1] for ln in _read(f"{base}/stack").splitlines() if ln]
        found.append(ThreadState(pid, tid, comm, state, _read(f"{base}/wchan").strip(), tuple(frames[:MAX_FRAMES])))
    return found


def of_processes(pids: Iterable[int]) -> list[str]:
    """Each thread of each of ``pids`` as ``ThreadState.line``."""
    return [t.line() for pid in pids for t in threads(pid)]
