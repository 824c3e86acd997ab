"""Killing a process tree that may still be forking, none of it left behind.

CRIU restoring a tree forks as it goes (CRIU forks the root, each task its children), and
a resumed tree may fork too. Listing a tree's processes and then killing them leaves the
ones forked in between alive, reparented away (a CRIU task left so, stopped, kept CRIU's
socket open: the restore waited for CRIU's answer for ever). ``kill_forking`` stops first,
lists again under what it stopped until nothing is new, and only then kills.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

import psutil

from snapd_daemon.host.processes import stat_fields

_STOP_SECONDS = 2.0  # how long a listed process gets to be stopped
_CHASE_SECONDS = 10.0  # how long the processes forked under those stopped are listed


def kill_forking(roots: list[int]) -> list[int]:
    """SIGKILL ``roots`` and every process under them while they may still be forking (CRIU
    restoring a tree: CRIU forks the root, each task its children; a resumed tree), with none
    left out: each is SIGSTOPped first, and those under the stopped ones are listed again
    until none is new (a stopped process forks no more, and one it forked as the stop came is
    its child still; a killed parent's children would be reparented out of reach). Signals
    go through a pidfd opened when a process is first listed, so they never reach one that
    took its pid since. A process with a thread not stopped within ``_STOP_SECONDS`` of being
    listed (an uninterruptible wait) is killed with the rest, and so is all that was listed
    once ``_CHASE_SECONDS`` have passed (a tree that forks faster than it is listed, each new
    child escaping the stop its parent got as it forked). The pids killed, roots first."""
    held: dict[int, int] = {}  # pid -> its pidfd, in the order listed
    try:
        seen: set[int] = set()
        new = list(dict.fromkeys(roots))
        chased = time.monotonic() + _CHASE_SECONDS
        while new and time.monotonic() < chased:
            seen.update(new)
            for pid in new:
                with contextlib.suppress(ProcessLookupError):
                    held[pid] = os.pidfd_open(pid)
                    _send(held[pid], signal.SIGSTOP)
            deadline = time.monotonic() + _STOP_SECONDS
            while time.monotonic() < deadline and any(_may_fork(pid) for pid in new if pid in held):
                time.sleep(0.002)
            new = sorted(_descendants(seen) - seen)
        return [pid for pid, fd in held.items() if _send(fd, signal.SIGKILL)]
    finally:
        for fd in held.values():
            os.close(fd)


def _send(pidfd: int, sig: int) -> bool:
    """Send ``sig`` through ``pidfd``; False if its process has ended."""
    try:
        signal.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        return False
    return True


def _may_fork(pid: int) -> bool:
    """Whether a thread of ``pid`` is neither stopped (nor in a tracer's stop) nor dead."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return False
    for tid in threads:
        try:
            if stat_fields(f"{pid}/task/{tid}")[0] not in (b"T", b"t", b"Z", b"X"):
                return True
        except (FileNotFoundError, ProcessLookupError):  # that thread has ended
            continue
    return False


def _descendants(pids: set[int]) -> set[int]:
    """Every live process under ``pids`` (one pass over the process table)."""
    children: dict[int, list[int]] = {}
    for proc in psutil.process_iter(["ppid"]):
        children.setdefault(proc.info["ppid"], []).append(proc.pid)
    found: set[int] = set()
    todo = list(pids)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found
