"""The local content store: chunks, manifests as bytes, pins and the hot tier in one state directory.

Layout under the state directory::

    chunks/ab/<blake3>   write-once chunk files (codec.py, chunkdir.py)
    manifests/<id>.json  one per complete snapshot, written last (opaque bytes here)
    pins/<id>            ids gc and rm leave alone
    quarantine/          chunks that failed their hash, manifests that did not parse (quarantine.py)

Write order for a snapshot (ingest.py): chunks under temporary names -> one
syncfs -> final names (links) -> chunk directories fsynced -> manifest (tmp,
fsync, rename, fsync dir). A crash at any point leaves the whole snapshot or
none of it; chunks of an unfinished snapshot are orphans that gc reclaims.
Operations that write or read chunks hold ``lock`` shared; gc and delete hold
it exclusive, so they never remove a chunk an in-flight ingest has written but
not yet committed. Every read verifies the chunk's hash; a chunk a read
(restore, prefetch, check) finds corrupt or missing goes to the quarantine
before the read fails, so no later ingest dedupes against its bad file. Only a
chunk's own bytes failing its own hash put it there: an intact chunk of another
length than a manifest says stays (ChunkLengthMismatch).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from snapd_daemon.errors import StoreError, StoreFull
from snapd_daemon.store import codec
from snapd_daemon.store.chunkdir import ChunkDir
from snapd_daemon.store.hot import HotTier
from snapd_daemon.store.imports import ChunkImport
from snapd_daemon.store.ingest import Ingest, IngestTarget, Progress
from snapd_daemon.store.manifests import ManifestDir, PinSet
from snapd_daemon.store.model import ChunkLengthMismatch, ChunkRef, ChunkUnreadable
from snapd_daemon.store.oserrors import translated
from snapd_daemon.store.quarantine import Quarantine
from snapd_daemon.store.rwlock import RWLock
from snapd_daemon.util.buffers import PerThread, ReadBuffers, carve
from snapd_daemon.util.meminfo import mem_available

log = structlog.get_logger()
# RAM a hot-tier fill or prefetch leaves free besides what it adds.
_RAM_RESERVE = 1 << 30


@dataclass
class PrunePlan:
    """Chunks to remove: (id, stored size) of each; and quarantine entries to forget."""

    chunks: list[tuple[str, int]] = field(default_factory=list)
    quarantined: set[str] = field(default_factory=set)

    @property
    def bytes(self) -> int:
        return sum(size for _, size in self.chunks)


class _Count:
    """A byte count several threads add to."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total = 0

    def add(self, n: int) -> int:
        with self._lock:
            self.total += n
            return self.total


class LocalStore:
    def __init__(self, root: Path, threads: int, hot: HotTier | None = None,
                 min_saving: float = codec.MIN_SAVING) -> None:
        """``min_saving``: a chunk is stored compressed only if that saves at least this
        fraction of its size; else raw, so that restores copy it instead of decoding."""
        self.root = root
        self.threads = threads
        self.hot = hot
        self.min_saving = min_saving
        self.chunks = ChunkDir(root / "chunks")
        self.manifests = ManifestDir(root / "manifests")
        self.pins = PinSet(root / "pins")
        self.quarantine = Quarantine(root / "quarantine")
        self.lock = RWLock()

    def recover(self) -> None:
        """Remove every temporary file a crash left. Must run before the daemon accepts requests."""
        self.manifests.remove_temporaries()
        self.pins.remove_temporaries()
        self.chunks.remove_temporaries()
        self.quarantine.remove_temporaries()

    def translate_os_errors(self, needed: int) -> AbstractContextManager[None]:
        """Turn ENOSPC/EDQUOT into StoreFull and other OS errors into StoreError."""
        return translated(self.root, needed)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def disk_bytes(self) -> int:
        return sum(size for _, size in self.chunks.all())

    # -- writing --------------------------------------------------------------

    def begin_ingest(self, source: Path, progress: Progress, keep_hot: bool = False,
                     hot_ram_needed: int = 0) -> Ingest:
        """Start storing the files of directory ``source`` (see ingest.py).
        ``keep_hot``: also put the raw chunks in the hot tier, as a prefetch would;
        refused (StoreFull) unless RAM has room for ``hot_ram_needed`` bytes more."""
        if keep_hot:
            hot = self._hot()
            free = min(hot.free_bytes(), mem_available())
            if hot_ram_needed + _RAM_RESERVE > free:
                raise StoreFull(path=hot.root, needed=hot_ram_needed, free=free)
        return Ingest(IngestTarget(self.root, self.chunks, self.manifests, self.lock, self.threads,
                                   self.min_saving), source, progress,
                      self.hot if keep_hot else None)

    def begin_import(self) -> ChunkImport:
        """Start taking in a snapshot's chunks in their stored form (a pull, an export stream;
        see imports.py)."""
        return ChunkImport(self.root, self.chunks, self.manifests, self.lock)

    # -- reading --------------------------------------------------------------

    def read_chunks(self, refs: Sequence[ChunkRef], buffers: ReadBuffers, hot: bool = True) -> list[memoryview]:
        """Verified bytes of each chunk of a batch, in order, views into ``buffers`` (valid
        until their next batch): from the hot tier when it has them (and ``hot``), else from
        disk (``codec.decode_many``). Each chunk is hashed against
        its id before it is returned; one that fails is read again alone (``_read_disk``),
        which quarantines it and raises ChunkUnreadable: then nothing of the batch is returned."""
        slots = carve(buffers.batch_raw, [r.length + 1 for r in refs])
        hot_tier = self.hot if hot else None
        views = [hot_tier.read(ref.id, slot, ref.length) if hot_tier else None for ref, slot in zip(refs, slots)]
        disk = [i for i, view in enumerate(views) if view is None]
        read = dict(zip(disk, self._read_disk_batch([refs[i] for i in disk], [slots[i] for i in disk], buffers)))
        return [view if view is not None else read[i] for i, view in enumerate(views)]

    def _read_disk_batch(self, refs: list[ChunkRef], slots: list[memoryview], buffers: ReadBuffers) -> list[memoryview]:
        """``read_chunks``' part from disk: ``slots`` hold the byte-planes chunks joined."""
        if not refs:
            return []
        sizes = [codec.HEADER.size + ref.length + 1 for ref in refs]
        blobs = [self.chunks.read_file(ref.id, slot) or slot[:0]
                 for ref, slot in zip(refs, carve(buffers.batch_stored, sizes), strict=True)]
        views = []
        for ref, view in zip(refs, codec.decode_many(blobs, [ref.length for ref in refs], slots, buffers), strict=True):
            if view is None or codec.chunk_id(view) != ref.id:
                view = memoryview(bytes(self._read_disk(ref.id, buffers, ref.length)))
            views.append(view)
        return views

    def readahead(self, cid: str) -> None:
        """Ask the kernel to start reading chunk ``cid`` from disk, without waiting for it.
        Advice: a chunk that cannot be opened or advised is left to the read."""
        try:
            fd = os.open(self.chunks.path(cid), os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)

    def cold(self, cids: list[str], sample: int = 16) -> bool:
        """Whether reading ``cids`` would wait for the disk: some of an evenly spread
        sample of them is in neither the hot tier nor the page cache (a read of its first
        page with RWF_NOWAIT would block)."""
        page = memoryview(bytearray(4096))
        for cid in cids[:: max(1, len(cids) // sample)]:
            if self.hot is not None and self.hot.has(cid):
                continue
            try:  # O_NONBLOCK: a probe never waits, not even on a chunk that is no regular file
                fd = os.open(self.chunks.path(cid), os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                os.preadv(fd, [page], 0, os.RWF_NOWAIT)
            except BlockingIOError:
                return True
            except OSError:
                continue
            finally:
                os.close(fd)
        return False

    def _read_disk(self, cid: str, buffers: ReadBuffers, length: int = 0) -> memoryview:
        """Verified bytes of a chunk on disk (``length``: its raw length, 0 if unknown); one
        found corrupt or missing is quarantined, then ChunkUnreadable raised."""
        try:
            return self.chunks.read(cid, buffers, length)
        except ChunkUnreadable as err:
            raise self._contain(err) from None

    def _contain(self, err: ChunkUnreadable) -> ChunkUnreadable:
        """Put the chunk ``err`` is about in quarantine (best effort: the read's error is what
        the caller must see); the error to raise."""
        q, cid = self.quarantine, err.cid
        if isinstance(err, ChunkLengthMismatch):
            return err  # an intact chunk: the reference was wrong
        try:
            if err.file_id is not None:
                if self.chunks.move_out(cid, err.file_id, q.chunk_path(cid)):
                    q.sync()
                    log.error("store.chunk_quarantined", chunk=cid, problem=err.problem, path=str(q.chunk_path(cid)))
            elif q.holds_file(cid):
                return ChunkUnreadable(cid, "in quarantine (it failed its hash on an earlier read)")
            elif q.mark_missing(cid):
                log.error("store.chunk_missing", chunk=cid, path=str(self.chunks.path(cid)))
        except OSError as exc:
            log.error("store.quarantine_failed", chunk=cid, error=str(exc))
        return err

    def read_stored(self, cid: str) -> bytes:
        """Chunk ``cid`` as stored (compressed), after checking it decodes to its hash: what a push
        uploads and an export streams. A bad one is quarantined and ChunkUnreadable raised, as for
        any read."""
        try:
            return self.chunks.read_stored(cid)
        except ChunkUnreadable as err:
            raise self._contain(err) from None

    def stored_size(self, cid: str) -> int:
        """Bytes chunk ``cid`` takes on disk (0: not stored)."""
        return self.chunks.exists(cid)

    def damaged(self, cids: set[str]) -> set[str]:
        """Those of ``cids`` that are in quarantine and were not stored anew since."""
        return {cid for cid in self.quarantine.chunk_ids() & cids if not self.chunks.exists(cid)}

    # -- hot tier -------------------------------------------------------------

    def _hot(self) -> HotTier:
        if self.hot is None:
            raise StoreError(path=self.root, reason="no RAM directory is configured for the hot tier")
        return self.hot

    def prefetch(self, holder: str, chunks: dict[str, int], progress: Progress) -> int:
        """Put ``chunks`` (id -> raw length), decompressed and verified, in the hot tier
        on behalf of ``holder``; bytes added. Raises ChunkUnreadable for a bad chunk."""
        hot = self._hot()
        missing = [(cid, length) for cid, length in chunks.items() if not hot.has(cid)]
        needed = sum(length for _, length in missing)
        if needed + _RAM_RESERVE > hot.free_bytes():
            raise StoreFull(path=hot.root, needed=needed, free=hot.free_bytes())
        count = _Count()
        scratch = PerThread()

        def one(item: tuple[str, int]) -> None:
            hot.add(item[0], self._read_disk(item[0], scratch.buffers, item[1]))
            progress(count.add(item[1]))

        with self.translate_os_errors(needed):
            hot.mark(holder, set(chunks))  # first, so no concurrent drop removes what this adds
        try:
            with self.lock.shared(), self.translate_os_errors(needed):
                with ThreadPoolExecutor(self.threads, thread_name_prefix="prefetch") as pool:
                    list(pool.map(one, missing))
        except BaseException:
            hot.unmark(holder)
            raise
        return needed

    def drop_prefetch(self, holder: str) -> int:
        return self.hot.unmark(holder) if self.hot is not None else 0

    def hot_bytes(self) -> int:
        """Bytes the hot tier holds (0 without one)."""
        return self.hot.bytes_used() if self.hot is not None else 0

    def is_hot(self, holder: str) -> bool:
        return self.hot is not None and (self.hot.snapshots_dir / holder).exists()

    # -- space and integrity --------------------------------------------------

    def plan_prune(self, live: set[str]) -> PrunePlan:
        """The stored chunks not in ``live``, and the quarantine entries of chunks not in
        ``live`` or stored anew. Caller holds the lock exclusive."""
        return PrunePlan([(cid, size) for cid, size in self.chunks.all() if cid not in live],
                         {cid for cid in self.quarantine.chunk_ids() if cid not in live or self.chunks.exists(cid)})

    def prune(self, plan: PrunePlan) -> int:
        """Remove the planned chunks; bytes freed. Caller holds the lock exclusive."""
        freed = 0
        for cid, _ in plan.chunks:
            freed += self.chunks.exists(cid)
            self.chunks.remove(cid)
        self.quarantine.forget(plan.quarantined)
        return freed

    def check(self, cids: list[str]) -> dict[str, str]:
        """Read and verify each chunk on disk (not the hot tier); id -> problem for the bad ones
        (quarantined, as any read does). Caller holds the lock shared (so that no gc or delete
        removes a chunk it still names while it reads)."""

        scratch = PerThread()

        def one(cid: str) -> str:
            try:
                self._read_disk(cid, scratch.buffers)
            except ChunkUnreadable as err:
                return err.problem
            return ""

        with ThreadPoolExecutor(self.threads, thread_name_prefix="fsck") as pool:
            return {cid: problem for cid, problem in zip(cids, pool.map(one, cids), strict=True) if problem}

    def orphans(self, live: set[str]) -> int:
        """How many stored chunks ``live`` does not name."""
        return sum(1 for cid, _ in self.chunks.all() if cid not in live)
