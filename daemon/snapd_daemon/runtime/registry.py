"""Registry of in-flight operations: exclusivity on pids and snapshots, and drain.

An operation claims the pids it works on (checkpoint) or the snapshot it reads
(restore, delete). A second claim on the same pid or snapshot is refused with
the id of the operation that holds it. ``close`` stops new claims and
``drain`` waits for the running ones, which is how the daemon stops safely.
A long operation's cancel token is found here by its id (``cancellable``,
``cancel``) from its start until it has ended, with its latest progress
(``noted``); ``running`` lists every operation for `snapd ops`. The one place
long operations are published as events (runtime/events.py): started, each
progress event noted, and how they ended.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from snapd_daemon.errors import ProcessBusy, ShuttingDown, SnapdError, SnapshotBusy
from snapd_daemon.runtime.cancel import CancelToken
from snapd_daemon.runtime.events import EventBus, OperationNote
from snapd_daemon.runtime.progress import ProgressEvent


def new_operation_id() -> str:
    return "op-" + secrets.token_hex(6)


@dataclass
class Operation:
    id: str
    kind: str
    pids: frozenset[int] = frozenset()
    snapshot_id: str = ""
    # restores of a replicable snapshot share it with each other
    shared: bool = False
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class RunningOperation:
    """One line of `snapd ops`."""

    id: str
    kind: str
    pids: frozenset[int]
    snapshot_id: str
    seconds: float
    progress: ProgressEvent | None
    cancellable: bool


class OperationRegistry:
    def __init__(self, events: EventBus | None = None) -> None:
        self.events = events or EventBus()
        self._lock = threading.Condition()
        self._ops: dict[str, Operation] = {}
        self._tokens: dict[str, CancelToken] = {}
        # long operations by id: (kind, start, latest progress), while their token is reachable
        self._long: dict[str, tuple[str, float, ProgressEvent | None]] = {}
        self._closed = False

    @contextmanager
    def claim(
        self, kind: str, operation_id: str, pids: Iterable[int] = (), snapshot_id: str = "", shared: bool = False
    ) -> Iterator[Operation]:
        """Hold ``pids`` / ``snapshot_id`` for the duration of the block; a ``shared`` claim
        of a snapshot is refused only by claims that are not shared."""
        op = Operation(id=operation_id, kind=kind, pids=frozenset(pids), snapshot_id=snapshot_id, shared=shared)
        with self._lock:
            if self._closed:
                raise ShuttingDown()
            for other in self._ops.values():
                clash = op.pids & other.pids
                if clash:
                    raise ProcessBusy(pid=min(clash), operation_id=other.id)
                if snapshot_id and snapshot_id == other.snapshot_id and not (shared and other.shared):
                    raise SnapshotBusy(snapshot_id=snapshot_id, operation_id=other.id)
            self._ops[op.id] = op
        with self._listed(self._ops, op.id):
            yield op

    @contextmanager
    def cancellable(self, token: CancelToken, kind: str = "") -> Iterator[CancelToken]:
        """Make ``token`` reachable by its operation id for the duration of the block, and list
        the operation (of ``kind``) as running; its start and end are published."""
        op_id = token.operation_id
        with self._lock:
            self._tokens[op_id] = token
            self._long[op_id] = (kind, time.monotonic(), None)
        self.events.publish(OperationNote(op_id, kind, "started"))
        try:
            with self._listed(self._long, op_id), self._listed(self._tokens, op_id):
                yield token
        except SnapdError as err:
            self.events.publish(OperationNote(op_id, kind, "failed", error=type(err).__name__,
                                              exit_code=err.exit_code, message=err.message))
            raise
        except BaseException as exc:
            self.events.publish(OperationNote(op_id, kind, "failed", error="internal", exit_code=1,
                                              message=f"{type(exc).__name__}: {exc}"))
            raise
        self.events.publish(OperationNote(op_id, kind, "succeeded"))

    def noted(self, operation_id: str, event: ProgressEvent) -> None:
        """Remember ``event`` as the latest progress of a long operation, and publish it."""
        with self._lock:
            if operation_id not in self._long:
                return
            kind, started, _ = self._long[operation_id]
            self._long[operation_id] = (kind, started, event)
        self.events.publish(OperationNote(operation_id, kind, "progress", progress=event))

    def running(self) -> list[RunningOperation]:
        """Every operation running now, oldest first."""
        now = time.monotonic()
        with self._lock:
            found = {op.id: RunningOperation(op.id, op.kind, op.pids, op.snapshot_id, now - op.started, None, False)
                     for op in self._ops.values()}
            for op_id, (kind, started, event) in self._long.items():
                claim = self._ops.get(op_id)
                found[op_id] = RunningOperation(op_id, kind or (claim.kind if claim else ""),
                                                claim.pids if claim else frozenset(),
                                                claim.snapshot_id if claim else "", now - started, event, True)
        return sorted(found.values(), key=lambda op: -op.seconds)

    @contextmanager
    def _listed(self, table: dict[str, Any], key: str) -> Iterator[None]:
        """Drop ``table[key]`` (entered by the caller) when the block ends, and wake ``drain``."""
        try:
            yield
        finally:
            with self._lock:
                del table[key]
                self._lock.notify_all()

    def cancel(self, operation_id: str, why: str) -> bool | None:
        """Cancel a running operation: True if it will roll back, False if it is past its
        commit point, None if no operation of that id is running."""
        with self._lock:
            token = self._tokens.get(operation_id)
        return None if token is None else token.cancel(why)

    def cancel_all(self, why: str) -> list[str]:
        """Cancel every running operation; the ids of those that will roll back."""
        with self._lock:
            tokens = list(self._tokens.values())
        return [t.operation_id for t in tokens if t.cancel(why)]

    def in_flight(self) -> list[Operation]:
        with self._lock:
            return list(self._ops.values())

    def close(self) -> None:
        """Refuse every new claim from now on."""
        with self._lock:
            self._closed = True

    def drain(self, timeout: float | None) -> bool:
        """Wait for running operations to end; True if none is left."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._ops, timeout=timeout)
