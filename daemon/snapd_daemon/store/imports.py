"""Import: chunks of one snapshot arriving in their stored form from elsewhere (a pull, an
export stream).

``add`` stages a chunk, already verified by the caller, under a temporary
name (a flusher writes them back while more arrive, as during an ingest);
``commit`` makes every staged chunk durable (one syncfs), gives them
their names, then writes the manifest, last: a snapshot appears whole or not
at all, as with an ingest. ``abort`` (or leaving the ``with`` block without a
commit) removes every temporary. Only ``commit`` takes the store lock (shared):
a download or stream may be slow, and a gc waiting for the lock would hold up
every checkpoint and restore; a local chunk the snapshot reuses that gc took
meanwhile fails the commit (a restore reading such chunks holds the lock itself
while it reads). Staged temporaries are never gc's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from snapd_daemon.errors import StoreError
from snapd_daemon.store.chunkdir import ChunkDir
from snapd_daemon.store.ingest import Flusher
from snapd_daemon.store.manifests import ManifestDir
from snapd_daemon.store.model import ChunkUnreadable
from snapd_daemon.store.oserrors import translated
from snapd_daemon.store.rwlock import RWLock
from snapd_daemon.util.buffers import ReadBuffers


class ChunkImport:
    """Thread-safe: many fetching threads ``add`` while others ``read``."""

    def __init__(self, root: Path, chunks: ChunkDir, manifests: ManifestDir, lock: RWLock) -> None:
        self.root = root
        self.chunks = chunks
        self.manifests = manifests
        self._store_lock = lock
        self._lock = threading.Lock()
        self.staged: dict[str, Path] = {}
        self.sizes: dict[str, int] = {}
        self.staged_bytes = 0
        self.committed = False
        self.closed = False  # a chunk that arrives after the end is not kept
        self._flusher: Flusher | None = Flusher(root, self).__enter__()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self.committed:
            self.abort()
        self.close()

    def has(self, cid: str) -> bool:
        """Whether the store or this import holds chunk ``cid``."""
        with self._lock:
            if cid in self.staged:
                return True
        return bool(self.chunks.exists(cid))

    def add(self, cid: str, blob: bytes | memoryview) -> None:
        """Stage chunk ``cid`` in its stored form (verified by the caller)."""
        with translated(self.root, len(blob)):
            tmp = self.chunks.stage(cid, (blob,))
        with self._lock:
            if self.committed or self.closed or cid in self.staged:
                tmp.unlink()
                return
            self.staged[cid] = tmp
            self.sizes[cid] = len(blob)
            self.staged_bytes += len(blob)

    def read(self, cid: str, buffers: ReadBuffers, length: int = 0) -> memoryview:
        """Verified raw bytes of a chunk this import staged, a view into ``buffers``;
        ChunkUnreadable if it has not (ChunkLengthMismatch: not ``length`` bytes long)."""
        with self._lock:
            tmp = self.staged.get(cid)
        if tmp is None:
            raise ChunkUnreadable(cid, "not fetched")
        return self.chunks.read(cid, buffers, length, path=tmp)

    def stored_size(self, cid: str) -> int:
        """Bytes chunk ``cid`` takes staged here, or in the store (0: neither)."""
        with self._lock:
            if cid in self.sizes:
                return self.sizes[cid]
        return self.chunks.exists(cid)

    def commit(self, manifest_id: str, used: set[str], render: Callable[[set[str]], bytes]) -> set[str]:
        """Publish the staged chunks, then the manifest ``render`` makes given the chunks new to
        the store (which it returns). Every chunk in ``used`` must be staged or stored (else
        StoreError, nothing published)."""
        self._stop_flusher()
        with self._store_lock.shared():
            return self._commit(manifest_id, used, render)

    def _commit(self, manifest_id: str, used: set[str], render: Callable[[set[str]], bytes]) -> set[str]:
        with self._lock:
            staged = dict(self.staged)
        lacking = sorted(cid for cid in used if cid not in staged and not self.chunks.exists(cid))
        if lacking:
            raise StoreError(path=self.root, reason=f"snapshot {manifest_id} cannot be published: chunk {lacking[0]} "
                             f"(and {len(lacking) - 1} more) neither received nor stored")
        with translated(self.root, self.staged_bytes):
            added = self.chunks.publish(staged)
            self.chunks.sync_prefixes(used - added)
            with self.chunks.naming():
                gone = sorted(cid for cid in used if not self.chunks.exists(cid))
                if gone:
                    raise StoreError(path=self.root, reason=f"chunk {gone[0]} of snapshot {manifest_id} was taken "
                                     "out of the store meanwhile (gc, or a read that found it corrupt); pull or import it again")
                self.manifests.put(manifest_id, render(added))
        with self._lock:
            self.staged.clear()
            self.committed = True
        return added

    def abort(self) -> None:
        """Remove every staged chunk; a chunk added from now on is not kept."""
        with self._lock:
            self.closed = True
            for tmp in self.staged.values():
                tmp.unlink(missing_ok=True)
            self.staged.clear()
            self.sizes.clear()

    def close(self) -> None:
        with self._lock:
            self.closed = True
        self._stop_flusher()

    def _stop_flusher(self) -> None:
        if self._flusher is not None:
            self._flusher.__exit__(None, None, None)
            self._flusher = None
