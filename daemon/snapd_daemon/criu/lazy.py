"""The receiving end of CRIU's lazy-pages socket: one userfaultfd per restored task.

With ``lazy_pages`` CRIU (chdir'd to its work directory) connects to
``lazy-pages.socket`` there before it forks the tree, so the socket must be
listening before CRIU is called. Over that one stream, for each task as its
restorer sets up: an int32 pid (the pid the images name the task by), then the
task's uffd as an SCM_RIGHTS fd with one byte of data; a zombie sends its pid
negated and no fd. Near the end CRIU sends RESTORE_FINISHED and closes. The
fd received is the only one left (CRIU's restorer closes its own copy), so
whoever owns it decides when the task's missing pages become plain zero pages.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import structlog

log = structlog.get_logger()
SOCKET_NAME = "lazy-pages.socket"
RESTORE_FINISHED = 0x52535446  # "RSTF"
# (image pid, uffd) -> None; owns the fd from then on
Receive = Callable[[int, int], None]


class LazySocket:
    """Listens at ``<work>/lazy-pages.socket`` from construction; a thread accepts CRIU's
    connection and hands each (pid, uffd) to ``receive`` as it arrives, until
    RESTORE_FINISHED or the end of the stream. ``failure`` holds what went wrong
    (a broken stream, ``receive`` raising; a task whose uffd never came is the caller's
    to notice); ``close`` stops listening, waits, and logs the failure."""

    def __init__(self, work: Path, receive: Receive) -> None:
        self.path = work / SOCKET_NAME
        self.receive = receive
        self.finished = False
        self.failure: BaseException | None = None
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.path))
        self._listener.listen(1)
        self._thread = threading.Thread(target=self._serve, name="lazy-pages", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError:  # closed before CRIU connected
            return
        with conn:
            try:
                self._read(conn)
            except BaseException as exc:
                self.failure = exc

    def _read(self, conn: socket.socket) -> None:
        while True:
            head = conn.recv(4, socket.MSG_WAITALL)
            if len(head) < 4:
                return
            (pid,) = struct.unpack("<i", head)
            if pid == RESTORE_FINISHED:
                self.finished = True
                return
            if pid < 0:
                log.info("lazy.zombie", pid=-pid)
                continue
            # close-on-exec: no child the daemon starts may keep a uffd open after the fill closes it
            _, fds, _, _ = socket.recv_fds(conn, 1, 1, socket.MSG_CMSG_CLOEXEC)
            if not fds:
                raise ConnectionError(f"CRIU sent pid {pid} on the lazy-pages socket without its userfaultfd")
            try:
                self.receive(pid, fds[0])
            except BaseException:
                os.close(fds[0])
                raise

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        if self.failure is not None:
            log.error("lazy.socket_failed", error=str(self.failure), finished=self.finished)


@contextlib.contextmanager
def listening(work: Path, receive: Receive) -> Iterator[LazySocket]:
    """A ``LazySocket`` for the ``with`` block."""
    sock = LazySocket(work, receive)
    try:
        yield sock
    finally:
        sock.close()
