"""A background thread that calls ``poll`` every ``interval`` seconds while a block runs, in the
context (structlog's bound operation id) of the thread that made it."""

from __future__ import annotations

import abc
import contextvars
import threading
from types import TracebackType
from typing import Self


class Poller(abc.ABC):
    """Subclasses implement ``poll``; returning False ends the polling early."""

    def __init__(self, name: str, interval: float) -> None:
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._run,), name=name, daemon=True)

    @abc.abstractmethod
    def poll(self) -> bool:
        """One round of work, on the poller's thread."""

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            if not self.poll():
                return
