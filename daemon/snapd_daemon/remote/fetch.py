"""Fetching a snapshot's missing chunks from the remote tier into a local import, in parallel.

Chunks are fetched in the order given (the order a restore needs them), by
``threads`` workers; a reader that ``wait``s for a chunk not yet started moves
it to the front, so a restore's delivery never waits behind chunks it needs
later. A restore's first reader of a chunk gets the raw bytes the fetch
verified (within FRESH_LIMIT), sparing it a read back and a second hash. Each
chunk is opened (envelope) and verified against its id before it is staged (an
object that fails raises the error naming it, store/remote.py). The first failure stops the workers; every
waiter, and ``join``, raises it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Self

import structlog

from snapd_daemon import metrics
from snapd_daemon.store.imports import ChunkImport
from snapd_daemon.store.remote import RemoteStore
from snapd_daemon.util.poller import Poller

log = structlog.get_logger()
# Raw bytes of fetched chunks a restore's fetch keeps for their first reader, at most (beyond
# it, readers read them back staged).
FRESH_LIMIT = 256 << 20
# How often a reader waiting for a chunk runs ``stop`` (seconds), and how long a failed fetch
# waits for its workers' requests in flight.
WAIT_TICK = 0.1
FAILED_JOIN_SECONDS = 5.0


class Fetcher:
    def __init__(self, remote: RemoteStore, imported: ChunkImport, order: list[tuple[str, int]], what: str,
                 key_id: str | None, stop: Callable[[], None] = lambda: None, fresh_limit: int = 0) -> None:
        """``order``: (chunk id, raw length) in the order they are wanted (those the local
        store or the import has are skipped); ``what``: the snapshot, for messages; ``key_id``:
        the key that sealed its manifest and so its chunks (None: plaintext); ``stop``:
        raises to stop the fetch (a cancel); ``fresh_limit``: raw bytes kept for first readers."""
        self.remote = remote
        self.key_id = key_id
        self.imported = imported
        self.what = what
        self.stop = stop
        lengths = dict(order)
        wanted = [cid for cid in lengths if not imported.has(cid)]
        self._lengths = {cid: lengths[cid] for cid in wanted}
        self.raw_total = sum(self._lengths.values())
        self.raw_done = 0
        self._pending = deque(wanted)
        self._urgent: deque[str] = deque()
        self._done = {cid: threading.Event() for cid in wanted}
        self._started: set[str] = set()
        self._cond = threading.Condition()
        self.failure: BaseException | None = None
        self.fetched_bytes = 0
        self.fetched_chunks = 0
        self._fresh: dict[str, bytes | memoryview] = {}
        self._fresh_bytes = 0
        self._fresh_limit = fresh_limit
        self._threads = [threading.Thread(target=self._work, name=f"fetch-{i}", daemon=True)
                         for i in range(min(remote.cfg.threads, max(1, len(wanted))))]

    @property
    def chunks(self) -> int:
        """How many chunks this fetch brings."""
        return len(self._done)

    def wants(self, cid: str) -> bool:
        return cid in self._done

    def __enter__(self) -> Self:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        with self._cond:
            if self.failure is None and exc is not None:
                self.failure = exc
            self._pending.clear()
            self._urgent.clear()
            self._cond.notify_all()
        # after a failure a worker may be inside a request to a server that hangs: it is waited
        # for a little, then left to end when its request does (a daemon thread); the import
        # refuses what it brings by then
        deadline = None if self.failure is None else time.monotonic() + FAILED_JOIN_SECONDS
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        for event in self._done.values():  # no waiter outlives the fetch
            event.set()

    def wait(self, cid: str) -> bytes | memoryview | None:
        """Return once chunk ``cid`` is staged: its verified raw bytes to the first reader while
        they are held (``fresh_limit``), else None (read it from the import). Raises the fetch's
        failure if it failed."""
        with self._cond:
            if cid not in self._started and self.failure is None:
                self._urgent.append(cid)
        self._await(cid)
        with self._cond:
            raw = self._fresh.pop(cid, None)
            self._fresh_bytes -= len(raw) if raw is not None else 0
        return raw

    def progress(self, report: Callable[[int, int], None], interval: float = 0.25) -> FetchProgress:
        """A poller passing (raw bytes fetched, raw bytes to fetch) to ``report`` while it runs."""
        return FetchProgress(self, report, interval)

    def join(self) -> None:
        """Wait for every chunk; raise the first failure."""
        for cid in self._done:
            self._await(cid)

    def _await(self, cid: str) -> None:
        """Return once chunk ``cid`` is staged; raise the fetch's failure. ``stop`` runs while
        waiting: a cancel ends the wait even while the chunk's request hangs."""
        while not self._done[cid].wait(WAIT_TICK):
            try:
                self.stop()
            except BaseException as exc:
                self._fail(exc)
                raise
        if self.failure is not None:
            raise self.failure

    def _next(self) -> str | None:
        with self._cond:
            while self.failure is None:
                queue = self._urgent if self._urgent else self._pending
                if not queue:
                    return None
                cid = queue.popleft()
                if cid not in self._started:
                    self._started.add(cid)
                    return cid
            return None

    def _work(self) -> None:
        while (cid := self._next()) is not None:
            try:
                self.stop()
                blob, raw = self.remote.get_chunk(cid, self.what, self.key_id)
                self.imported.add(cid, blob)
            except BaseException as exc:
                self._fail(exc, cid)
                return
            metrics.REMOTE_BYTES.labels("down").inc(len(blob))
            with self._cond:
                self.fetched_bytes += len(blob)
                self.fetched_chunks += 1
                self.raw_done += self._lengths[cid]
                if self._fresh_bytes + len(raw) <= self._fresh_limit:
                    self._fresh[cid] = raw
                    self._fresh_bytes += len(raw)
            self._done[cid].set()


    def _fail(self, exc: BaseException, cid: str = "") -> None:
        """The fetch ends with ``exc`` (the first failure counts): workers stop taking chunks,
        every waiter wakes and raises it."""
        with self._cond:
            if self.failure is None:
                self.failure = exc
                log.warning("remote.fetch_failed", chunk=cid, error=str(exc))
            self._pending.clear()
            self._urgent.clear()
        for event in self._done.values():
            event.set()


class FetchProgress(Poller):
    def __init__(self, fetcher: Fetcher, report: Callable[[int, int], None], interval: float) -> None:
        super().__init__("fetch-progress", interval)
        self.fetcher = fetcher
        self.report = report

    def poll(self) -> bool:
        self.report(self.fetcher.raw_done, self.fetcher.raw_total)
        return True

    def __exit__(self, *exc: object) -> None:
        super().__exit__(None, None, None)
        self.poll()
