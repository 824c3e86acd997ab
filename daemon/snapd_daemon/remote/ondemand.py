"""A restore of a snapshot only the remote tier holds: its chunks pulled while it runs.

``OnDemand`` is the ``ChunkReader`` the restore's delivery reads from: a chunk
the local store has is read there; the others are fetched in parallel by a
``Fetcher`` (in the order the restore reads them, any chunk a delivery thread
waits for moved to the front) and read back, verified, as soon as each is
staged. So the images for CRIU and the memory injected afterwards are written
while the rest is still arriving. Once the restore has read everything,
``publish`` makes the pulled snapshot a local one (chunks, then manifest) once
the tree runs; a restore that fails discards what was staged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack
from typing import Any

import structlog

from snapd_daemon.errors import SnapdError
from snapd_daemon.remote.fetch import FRESH_LIMIT, Fetcher
from snapd_daemon.remote.listing import RemoteSnapshot, find, require_remote
from snapd_daemon.remote.pull import fetch_order
from snapd_daemon.runtime import Runtime
from snapd_daemon.runtime.progress import Phase, ProgressEvent, Reporter
from snapd_daemon.snapshots.manifest import Manifest
from snapd_daemon.store.model import ChunkLengthMismatch, ChunkRef
from snapd_daemon.util.buffers import ReadBuffers

log = structlog.get_logger()


class OnDemand:
    def __init__(self, rt: Runtime, snapshot: RemoteSnapshot, report: Reporter, stop: Callable[[], None]) -> None:
        """``stop`` raises to end the fetch and every wait for a chunk (the restore's cancel)."""
        self.rt = rt
        self.manifest: Manifest = snapshot.manifest
        self.key_id = snapshot.key_id
        self.report = report
        self.stop = stop
        self.fetcher: Fetcher | None = None
        self._stack = ExitStack()

    @classmethod
    def find(cls, rt: Runtime, ref: str, report: Reporter, stop: Callable[[], None]) -> OnDemand:
        """For the remote snapshot ``ref`` names; RemoteNotConfigured without a remote tier."""
        return cls(rt, find(require_remote(rt), ref, rt.settings.fleet_keys), report, stop)

    def __enter__(self) -> OnDemand:
        """Start fetching (the caller holds the store lock shared while it reads; the publish
        takes it again for its commit, which checks the local chunks reused are still there)."""
        remote = require_remote(self.rt)
        with ExitStack() as stack:
            self.imported = stack.enter_context(self.rt.store.begin_import())
            self.fetcher = Fetcher(remote, self.imported, fetch_order(self.manifest), f"snapshot {self.manifest.id}",
                                   self.key_id, stop=self.stop, fresh_limit=FRESH_LIMIT)
            self.report(ProgressEvent(Phase.DOWNLOAD, 0, self.fetcher.raw_total,
                                      f"fetching {self.fetcher.chunks} chunk(s) from {remote.cfg.where}"))
            stack.enter_context(self.fetcher)
            stack.enter_context(self.fetcher.progress(
                lambda done, total: self.report(ProgressEvent(Phase.DOWNLOAD, done, total))))
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.__exit__(*exc)  # the fetch learns why it ends (it then leaves hung requests behind)

    def translate_os_errors(self, needed: int) -> AbstractContextManager[None]:
        return self.rt.store.translate_os_errors(needed)

    def read_chunks(self, refs: Sequence[ChunkRef], buffers: ReadBuffers, hot: bool = True) -> list[memoryview]:
        """The local store's batch read for the chunks it has; each other one waited for
        and read back (a copy: the batch buffers hold the local ones)."""
        fetcher = self.fetcher
        pulled = {i for i, ref in enumerate(refs) if fetcher is not None and fetcher.wants(ref.id)}
        local = iter(self.rt.store.read_chunks([r for i, r in enumerate(refs) if i not in pulled], buffers, hot))
        return [self._pulled(ref, buffers) if i in pulled else next(local) for i, ref in enumerate(refs)]

    def _pulled(self, ref: ChunkRef, buffers: ReadBuffers) -> memoryview:
        """Chunk ``ref`` as the fetcher verified it, or as the import staged it (a copy);
        ChunkLengthMismatch when it is intact but not ``ref.length`` bytes long."""
        assert self.fetcher is not None
        raw = self.fetcher.wait(ref.id)
        if raw is None:
            return memoryview(bytes(self.imported.read(ref.id, buffers, ref.length)))
        if len(raw) != ref.length:
            raise ChunkLengthMismatch(ref.id, len(raw), ref.length)
        return memoryview(raw)

    def readahead(self, cid: str) -> None:
        """Chunks the local store has are read ahead there; the fetcher orders the others."""
        self.rt.store.readahead(cid)

    def cold(self, cids: list[str], sample: int = 16) -> bool:
        return self.rt.store.cold(cids, sample)

    @property
    def fetched(self) -> tuple[int, int]:
        """(bytes, chunks) fetched so far."""
        return (self.fetcher.fetched_bytes, self.fetcher.fetched_chunks) if self.fetcher else (0, 0)

    def publish(self) -> None:
        """Keep the pulled snapshot in the local store (best effort: the restore has what it
        needs; a failure here is logged and the staged chunks discarded)."""
        assert self.fetcher is not None
        try:
            self.fetcher.join()
            self.rt.catalog.adopt(self.imported, self.manifest)
        except SnapdError as err:
            log.warning("remote.pulled_copy_not_kept", snapshot=self.manifest.id, error=err.message)
