"""The daemon's event stream: operation phases and instance state changes, numbered.

Every event gets the next sequence number (1, 2, ... from the daemon's start;
``stream_id`` names this numbering, so that a cursor of an earlier daemon
process is recognised) and goes into a ring of the latest ``RING_SIZE``. A
watcher (``follow``) replays the held events after its cursor, then waits for
new ones; a cursor older than the ring, or a watcher that falls that far
behind, ends with EventsExpired rather than a silent gap. Publishing never
blocks on watchers.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from snapd_daemon.errors import EventsExpired
from snapd_daemon.runtime.progress import ProgressEvent

RING_SIZE = 4096
# how often a waiting watcher looks whether its caller is still there (seconds)
_WATCH_TICK = 1.0


@dataclass(frozen=True)
class OperationNote:
    """A long operation started, progressed, succeeded or failed (``state``)."""

    operation_id: str
    kind: str
    state: str
    progress: ProgressEvent | None = None
    error: str = ""
    exit_code: int = 0
    message: str = ""


@dataclass(frozen=True)
class Event:
    sequence: int
    time: float
    # an OperationNote, or an instance record (runtime/instances.py) as it is after a state change
    payload: Any


class EventBus:
    def __init__(self, ring_size: int = RING_SIZE) -> None:
        self.stream_id = "ev-" + secrets.token_hex(6)
        self._cond = threading.Condition()
        self._ring: deque[Event] = deque(maxlen=ring_size)
        self._last = 0
        self._closed = False

    def publish(self, payload: Any) -> Event:
        with self._cond:
            self._last += 1
            event = Event(self._last, time.time(), payload)
            self._ring.append(event)
            self._cond.notify_all()
        return event

    def close(self) -> None:
        """End every ``follow`` (the daemon is stopping)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def follow(self, after: int, stream_id: str, active: Callable[[], bool]) -> Iterator[Event]:
        """The events after sequence ``after`` (0: from now on), as they come, while ``active()``
        and the bus is open. Raises EventsExpired for a cursor of another daemon process
        (``stream_id`` given and not this one's), one past the last event, or one older than
        the ring (also when the caller falls that far behind)."""
        with self._cond:
            if stream_id and stream_id != self.stream_id:
                raise EventsExpired(after=after, reason=f"it is of event stream {stream_id}, and the daemon "
                                    f"has restarted since (this stream is {self.stream_id})")
            if after > self._last:
                raise EventsExpired(after=after, reason=f"the last event is {self._last} (the daemon has "
                                    "restarted since, and numbers its events from 1 again)")
            cursor = after if after else self._last
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._last > cursor or self._closed, timeout=_WATCH_TICK)
                if self._closed:
                    return
                first = self._ring[0].sequence if self._ring else self._last + 1
                if cursor + 1 < first:
                    raise EventsExpired(after=cursor, reason=f"the daemon holds events {first}-{self._last} "
                                        f"only (the latest {self._ring.maxlen})")
                fresh = list(itertools.islice(self._ring, cursor + 1 - first, None))
            for event in fresh:
                yield event
                cursor = event.sequence
            if not active():
                return
