"""The daemon as child subreaper of what it restores: exits seen as they happen, statuses kept.

``Reaper.start`` sets PR_SET_CHILD_SUBREAPER, so every orphan below the daemon
becomes its child instead of init's: a restored tree's root once `criu swrk`
(its parent) has exited, a tree member whose parent in the tree died, a
process a hook left behind. The kernel hands an orphan to the first live
thread of its new parent, the main thread; the daemon's main thread forks
nothing once it serves (CRIU, hooks and relays are forked by operation and RPC
threads, and listed under those), so ``/proc/self/task/<pid>/children`` lists
exactly the orphans. One thread handles two kinds of pid:

- watched (``watch``): a pidfd per process, in a selector. Readable means the
  process has ended: if it is the daemon's child, waitid(P_PIDFD) reaps it at
  once and its status is kept; if not (a member its parent in the tree reaps,
  a tree re-adopted after a daemon restart), the end is seen and its status is
  unknown.
- orphans nobody watches: on every SIGCHLD (``signal.set_wakeup_fd`` wakes the
  thread), each child of the main thread that is not watched is reaped by pid
  with waitid(P_PID, WNOHANG) and its status logged: a zombie reparented after
  its end was seen, what a hook left running.

Never waitpid(-1): the children other threads forked (CRIU, hooks, relays) are
waited for by those threads, by pid, and keep their statuses.
"""

from __future__ import annotations

import ctypes
import os
import select
import selectors
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil
import structlog

from snapd_daemon.host.processes import START_SLACK

log = structlog.get_logger()
PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class ExitStatus:
    """How a process ended: its exit code, or the signal that killed it; ``known`` False when
    the daemon could not reap it (not its child)."""

    known: bool
    code: int = 0
    signal: int = 0

    def describe(self) -> str:
        if not self.known:
            return "status unknown (not the daemon's child)"
        if self.signal:
            return f"killed by {signal.Signals(self.signal).name}"
        return f"exit status {self.code}"


UNKNOWN = ExitStatus(known=False)
ExitCallback = Callable[[int, ExitStatus], None]


def set_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


def _status(info: os.waitid_result) -> ExitStatus:
    if info.si_code == os.CLD_EXITED:
        return ExitStatus(known=True, code=info.si_status)
    return ExitStatus(known=True, signal=info.si_status)


def _reap(idtype: int, ident: int) -> ExitStatus | None:
    """Reap one ended child (a pidfd's, or a pid's): its status; None when it has not ended;
    UNKNOWN when it is not the daemon's child."""
    try:
        info = os.waitid(idtype, ident, os.WEXITED | os.WNOHANG)
    except ChildProcessError:
        return UNKNOWN
    return None if info is None else _status(info)


def open_pidfd(pid: int, started: float) -> int | None:
    """A pidfd of ``pid`` if it is the process that started at ``started`` (a zombie counts:
    it has not been reaped); None if gone or another process holds the pid now."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    try:  # read after the open: when it matches, the fd is that process's
        now = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        now = None
    if now is None or abs(now - started) >= START_SLACK:
        os.close(fd)
        return None
    return fd


def wait_ended(processes: list[tuple[int, float]], timeout: float) -> list[int]:
    """Wait, on their pidfds, until every process (pid, start time) has ended; the pids of
    those still running at ``timeout``."""
    fds = {fd: pid for pid, started in processes if (fd := open_pidfd(pid, started)) is not None}
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    try:
        while fds:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for fd, _ in poller.poll(left * 1000):
                poller.unregister(fd)
                os.close(fd)
                del fds[fd]
    finally:
        for fd in fds:
            os.close(fd)
    return sorted(fds.values())


def _no_op(_signum: int, _frame: object) -> None:
    """SIGCHLD's handler: its C part writes to the wakeup fd, which is all that is wanted."""


class Reaper:
    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._watches: dict[int, tuple[int, ExitCallback]] = {}  # pidfd -> (pid, callback)
        self._signals, self._signalled = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="reaper", daemon=True)

    def start(self) -> None:
        """Become the child subreaper and start reaping; call it from the main thread (it
        installs the SIGCHLD handler), before serving. It reaps until the daemon exits."""
        set_subreaper()
        signal.signal(signal.SIGCHLD, _no_op)
        signal.siginterrupt(signal.SIGCHLD, False)
        signal.set_wakeup_fd(self._signalled, warn_on_full_buffer=False)
        self._selector.register(self._signals, selectors.EVENT_READ)
        self._thread.start()
        os.write(self._signalled, b"\0")  # a first sweep: orphans that came before the handler

    def watch(self, pid: int, started: float, on_exit: ExitCallback) -> bool:
        """Call ``on_exit(pid, status)`` (on the reaper's thread) once the process (pid, start
        time) has ended; False, and no call, when it is gone already or the pid is another's."""
        fd = open_pidfd(pid, started)
        if fd is None:
            return False
        with self._lock:
            self._watches[fd] = (pid, on_exit)
            self._selector.register(fd, selectors.EVENT_READ)
        return True

    def watching(self) -> set[int]:
        with self._lock:
            return {pid for pid, _ in self._watches.values()}

    def _run(self) -> None:
        while True:
            for key, _ in self._selector.select():
                if key.fd == self._signals:
                    _drain(self._signals)
                    self._sweep()
                else:
                    self._ended(key.fd)

    def _ended(self, fd: int) -> None:
        with self._lock:
            pid, on_exit = self._watches.pop(fd)
            self._selector.unregister(fd)
        try:
            status = _reap(os.P_PIDFD, fd) or UNKNOWN
        finally:
            os.close(fd)
        try:
            on_exit(pid, status)
        except Exception:
            log.exception("reaper.callback_failed", pid=pid)

    def _sweep(self) -> None:
        """Reap every ended orphan nobody watches."""
        try:
            with open(f"/proc/self/task/{os.getpid()}/children") as f:
                orphans = [int(p) for p in f.read().split()]
        except OSError as exc:
            log.error("reaper.children_unreadable", error=str(exc))
            return
        watched = self.watching()
        for pid in orphans:
            if pid in watched:
                continue
            status = _reap(os.P_PID, pid)
            if status is not None and status.known:
                log.info("reaper.orphan_reaped", pid=pid, status=status.describe())


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
