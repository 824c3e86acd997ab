"""Cancellation of a long operation, decided once against its commit point.

Each checkpoint or restore gets one ``CancelToken``. A cancel (the caller's
CancelOperation, its call being cancelled, its deadline passing, its client
going away) is accepted only before the operation's commit point; the
operation then raises ``Cancelled`` at its next ``check`` (or at ``commit``)
and unwinds its undo stack. ``commit`` marks the point of no return: from then
on a cancel is refused and the operation completes. The two never both win:
``cancel`` and ``commit`` decide under one lock.
"""

from __future__ import annotations

import threading

from snapd_daemon.errors import Cancelled


class CancelToken:
    def __init__(self, operation_id: str, undone: str) -> None:
        """``undone``: what a rollback of this operation leaves, for the Cancelled message."""
        self.operation_id = operation_id
        self.undone = undone
        self._lock = threading.Lock()
        self._why: str | None = None
        self._committed = False

    def cancel(self, why: str) -> bool:
        """Ask the operation to roll back; False when it is past its commit point."""
        with self._lock:
            if self._committed:
                return False
            if self._why is None:
                self._why = why
            return True

    def check(self) -> None:
        """Raise Cancelled when a cancel was accepted."""
        with self._lock:
            self._raise_if_cancelled()

    def commit(self) -> None:
        """Pass the commit point: Cancelled if a cancel came first, else refuse every later one."""
        with self._lock:
            self._raise_if_cancelled()
            self._committed = True

    def _raise_if_cancelled(self) -> None:
        if self._why is not None and not self._committed:
            raise Cancelled(operation_id=self.operation_id, why=self._why, undone=self.undone)
