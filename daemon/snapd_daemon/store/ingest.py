"""Ingest: the files of one snapshot going into the store, possibly while they are written.

Roles (containerd's Ingester): ``submit`` pieces as they settle, ``extend``
with the final cut of files as it is known, ``complete`` with that of every
file, ``commit`` (chunks durable and visible, then the manifest), or
``abort``; ``close`` ends it. Which pieces to cut is the caller's knowledge
(the checkpoint side knows CRIU's images); the ingest only reads, hashes,
compresses and writes them.

Invariants:
- from ``begin`` until ``close`` the store lock is held shared, so gc never
  takes chunks of an uncommitted snapshot for orphans;
- a chunk is staged under a temporary name and gets its final name only at
  commit, after one syncfs made every staged byte durable; the manifest is
  written last, so a crash leaves the whole snapshot or none of it;
- ``abort`` (or leaving the ``with`` block without a commit) removes every
  chunk this ingest staged, and its RAM copies;
- a piece is stored unless the store or this ingest holds its chunk. The store
  is asked through a listing made in the background at ``begin``: while no
  chunk was published since, one the listing lacks is staged without a stat;
  otherwise (and before the listing is there) a stat answers. Should a chunk
  still be staged twice, ``link`` keeps the copy named first, and the
  manifest counts that one.
"""

from __future__ import annotations

import contextvars
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

import structlog

from snapd_daemon.errors import StoreError
from snapd_daemon.store import codec
from snapd_daemon.store.chunkdir import ChunkDir, StoredIds
from snapd_daemon.store.hot import HotTier
from snapd_daemon.store.manifests import ManifestDir
from snapd_daemon.store.model import ZERO_CHUNK, ChunkRef, Piece
from snapd_daemon.store.oserrors import translated
from snapd_daemon.store.rwlock import RWLock
from snapd_daemon.util.buffers import PerThread, read_fd
from snapd_daemon.util.fsutil import syncfs
from snapd_daemon.util.poller import Poller

log = structlog.get_logger()
Progress = Callable[[int], None]


@dataclass(frozen=True)
class Committed:
    """Compressed bytes of the chunks a manifest uses (shared ones included), and of
    those this commit was first to add to the store."""

    stored_bytes: int
    new_bytes: int


@dataclass(frozen=True)
class IngestTarget:
    """The parts of a store an ingest writes to, how many threads it may use, and the
    least a chunk's compression must save (a fraction) to be stored compressed."""

    root: Path
    chunks: ChunkDir
    manifests: ManifestDir
    lock: RWLock
    threads: int
    min_saving: float = codec.MIN_SAVING


@dataclass
class _Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: int = 0
    # chunks written by this ingest, not yet committed: id -> (temporary path, size)
    staged: dict[str, tuple[Path, int]] = field(default_factory=dict)
    # the same chunks: id -> (bytes stored raw, bytes stored compressed), the sizes under
    # the other storage policy (``codec.encode_measured``)
    policy_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    # chunks this ingest put in the hot tier (removed again if it aborts)
    hot_added: set[str] = field(default_factory=set)
    staged_bytes: int = 0


def _yield_to_dump() -> None:
    """Run this ingest thread 10 nice levels below the daemon (at most 19): while
    a dump runs, the tree is frozen, and the dumper should win the CPU over
    storing what it already wrote. Best effort."""
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + 10))
    except OSError as err:
        log.warning("ingest.nice_failed", error=str(err))


class Staged(Protocol):
    """What a flusher watches: bytes staged so far (an ingest's tally, an import)."""

    staged_bytes: int


class Flusher(Poller):
    """Writes staged chunks to disk in the background while an ingest (or an import) runs, so
    that the syncfs at commit finds little left to do: one syncfs per interval
    once ``threshold`` more bytes were staged. (A sync_file_range per chunk file
    in the writer threads did the same job at about 1.5x the host CPU on the CI
    VM, taken from CRIU and the hashing threads.) Durability still comes from
    the syncfs at commit."""

    def __init__(self, root: Path, tally: Staged, interval: float = 0.1, threshold: int = 32 << 20) -> None:
        super().__init__("ingest-flusher", interval)
        self.root = root
        self.tally = tally
        self.threshold = threshold
        self.flushed = 0

    def poll(self) -> bool:
        staged = self.tally.staged_bytes
        if staged - self.flushed >= self.threshold:
            try:
                syncfs(self.root)
            except OSError as err:  # the commit's syncfs reports it, with the operation's error mapping
                log.warning("ingest.flush_failed", error=str(err))
                return False
            self.flushed = staged
        return True


class Ingest:
    """Thread-safe for one submitter plus the completing thread."""

    def __init__(self, store: IngestTarget, source: Path, progress: Progress, hot: HotTier | None) -> None:
        self.store = store
        self.hot = hot
        self.source = source
        self.progress = progress
        self.tally = _Tally()
        self.pieces: dict[str, list[Piece]] = {}
        self.jobs: dict[str, list[Future[ChunkRef]]] = {}
        self._stale: list[Future[ChunkRef]] = []  # jobs of redone pieces that had started
        self.fds: dict[str, int] = {}
        self._lock = threading.Lock()
        self._shared = store.lock.shared()
        self._shared.__enter__()
        self._committed = False
        self._marked: str | None = None  # the hot tier's listing made at commit (dropped if it fails)
        self.pool = ThreadPoolExecutor(store.threads, thread_name_prefix="ingest", initializer=_yield_to_dump)
        self._running = threading.Event()  # cleared while ``paused``
        self._running.set()
        # the store's chunks, listed once beside the first pieces: while nothing was published
        # since, a piece the listing lacks needs no stat to know the store lacks it (a stat
        # per piece took 6% of the threads' time on the H200). ``listed`` is set when the
        # listing is there (or failed); pieces before it ask the store.
        self._stored: StoredIds | None = None
        self.listed = threading.Event()
        threading.Thread(target=contextvars.copy_context().run, args=(self._list_stored,),
                         name="ingest-listing", daemon=True).start()
        self._buffers = PerThread()
        self._flusher: Flusher | None = Flusher(store.root, self.tally).__enter__()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._shared is not None:
            if not self._committed:
                self.abort()
            self.close()

    def submitted(self, name: str) -> int:
        with self._lock:
            return len(self.pieces.get(name, ()))

    def submit(self, name: str, pieces: list[Piece]) -> None:
        """Store these pieces of file ``name`` (in order, after those submitted before)."""
        with self._lock:
            if name not in self.fds:
                self.fds[name] = os.open(self.source / name, os.O_RDONLY)
            fd = self.fds[name]
            self.pieces.setdefault(name, []).extend(pieces)
            self.jobs.setdefault(name, []).extend(self.pool.submit(self._store, fd, p) for p in pieces)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No piece starts while inside; those under way end. The caller's Python then
        does not queue behind every writer for the GIL after each system call: on an H200
        host, CRIU's post-dump notification (a walk of /proc while the tree is frozen)
        took 0.1-0.6 s beside 16 writers, under 0.04 s beside 4. Not reentrant: one
        caller at a time (the dump's notification thread)."""
        self._running.clear()
        try:
            yield
        finally:
            self._running.set()

    def extend(self, final: dict[str, list[Piece]]) -> None:
        """Submit what ``final`` (these files' pieces, in order) has beyond what was
        submitted. Early pieces that are not the start of a file's final cut are redone
        (chunks already staged are reused). A second call for the same files adds nothing."""
        early_bytes = 0
        redone = []
        total = sum(p.length for v in final.values() for p in v)
        with translated(self.store.root, total):
            for name, cuts in final.items():
                with self._lock:
                    submitted = self.pieces.get(name, [])
                    early = len(submitted)
                    if cuts[:early] != submitted:
                        # not started: never run; started: ``complete`` waits for them (their
                        # chunks are dropped at commit if unused), not this, so that the
                        # final pieces queue now
                        self._stale += [job for job in self.jobs[name] if not job.cancel()]
                        self.pieces[name], self.jobs[name] = [], []
                        redone.append(name)
                        early = 0
                early_bytes += sum(p.length for p in cuts[:early])
                self.submit(name, cuts[early:])
        with self.tally.lock:
            done = self.tally.done
        log.info("ingest.extended", files=len(final), early_bytes=early_bytes, new_bytes=total - early_bytes,
                 done_bytes=done, redone=redone)

    def complete(self, final: dict[str, list[Piece]]) -> dict[str, tuple[ChunkRef, ...]]:
        """Store every piece of ``final`` (every file's pieces, in order; ``extend`` for what
        was not submitted yet) and wait for all of it; the chunks of each file."""
        with translated(self.store.root, sum(p.length for v in final.values() for p in v)):
            with self._lock:
                unsubmitted = {name: cuts for name, cuts in final.items() if self.pieces.get(name) != cuts}
            if unsubmitted:
                self.extend(unsubmitted)
            waited = time.monotonic()
            for job in self._stale:
                job.exception()
            chunks = {name: tuple(job.result() for job in self.jobs[name]) for name in final}
            log.info("ingest.stored", seconds_waited=round(time.monotonic() - waited, 3))
        return chunks

    def commit(self, manifest_id: str, used: set[str], render: Callable[[Committed], bytes]) -> Committed:
        """Make the chunks in ``used`` durable and visible, then write the manifest
        ``render`` makes (it gets the sizes). Staged chunks not in ``used`` are dropped.
        The store lock stays held until ``close``."""
        self._stop_flusher()
        tally = self.tally
        with translated(self.store.root, tally.staged_bytes):
            for cid in [c for c in tally.staged if c not in used]:
                tally.staged.pop(cid)[0].unlink(missing_ok=True)
            synced = time.monotonic()
            added = self.store.chunks.publish({cid: tmp for cid, (tmp, _) in tally.staged.items()})
            self.store.chunks.sync_prefixes(used - added)  # chunks another writer linked: their entries durable too
            log.info("store.chunks_published", new_chunks=len(added), seconds=round(time.monotonic() - synced, 3))
            if self.hot is not None:  # before the manifest: a failure here leaves no manifest behind
                self.hot.mark(manifest_id, used)
                self._marked = manifest_id
            with self.store.chunks.naming():  # no quarantine takes a reused chunk away until the manifest is out
                # a chunk another writer named first counts as stored by it, and must still be there
                sizes = {cid: tally.staged[cid][1] if cid in added else self.store.chunks.exists(cid) for cid in used}
                gone = sorted(cid for cid, size in sizes.items() if not size)
                if gone:
                    raise StoreError(path=self.store.root, reason=f"chunk {gone[0]}, reused by this checkpoint, "
                                     "was taken out of the store meanwhile (a concurrent read found it corrupt); "
                                     "checkpoint again to store it anew")
                committed = Committed(sum(sizes.values()), sum(sizes[cid] for cid in added))
                self.store.manifests.put(manifest_id, render(committed))
            self._log_policy_sizes(added, committed.new_bytes)
            tally.staged.clear()
            self._committed = True
        return committed

    def _log_policy_sizes(self, added: set[str], stored: int) -> None:
        """Log what the chunks this commit added take (``stored``) and would take stored all
        raw and all compressed (compressed sizes of chunks stored raw unsampled in full are
        estimates: ``codec.encode_measured``): the cost of ``store_raw_below`` in disk."""
        sizes = [self.tally.policy_sizes[cid] for cid in added]
        log.info("ingest.policy_sizes", new_chunks=len(added), stored_bytes=stored,
                 store_raw_below=round(self.store.min_saving * 100, 3),
                 all_raw_bytes=sum(raw for raw, _ in sizes), all_compressed_bytes=sum(packed for _, packed in sizes))

    def abort(self) -> None:
        """Stop, and remove every chunk staged but not committed (and its RAM copy)."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.hot is not None and self._marked is not None:
            self.hot.unmark(self._marked)
        for tmp, _ in self.tally.staged.values():
            tmp.unlink(missing_ok=True)
        self.tally.staged.clear()
        if self.hot is not None:
            self.hot.discard_unheld(self.tally.hot_added)

    def close(self) -> None:
        """Release the files, threads and the store lock."""
        self._stop_flusher()
        self.pool.shutdown(wait=True)
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        if self._shared is not None:
            self._shared.__exit__(None, None, None)
            self._shared = None

    def _stop_flusher(self) -> None:
        if self._flusher is not None:
            self._flusher.__exit__(None, None, None)
            self._flusher = None

    def _list_stored(self) -> None:
        _yield_to_dump()
        try:
            self._stored = self.store.chunks.listing()
        except (OSError, ValueError) as exc:  # a stray file: every piece asks the store instead
            log.warning("ingest.listing_failed", error=str(exc))
        finally:
            self.listed.set()

    def _stored_size(self, cid: str) -> int:
        """Size of chunk ``cid`` in the store, 0 if it lacks it."""
        stored = self._stored
        if stored is not None and stored.current() and not stored.may_hold(cid):
            return 0
        return self.store.chunks.exists(cid)

    def _store(self, fd: int, piece: Piece) -> ChunkRef:
        """Read, hash, and (unless the store has it) encode and stage one piece. The
        piece is read into this thread's buffer (a fresh 2 MiB object per piece costs
        page faults on every thread), and ``tally.lock`` is never held across a
        system call: 16 writers queued behind one that waited in ``stat`` for the GIL
        (py-spy on the H200: 40% of their time at that lock)."""
        self._running.wait()
        raw = self._buffers.buffers.raw(piece.length)
        got = read_fd(fd, raw, piece.offset)
        if got != piece.length:
            raise StoreError(path=self.source, reason=f"file shrank while being read ({got} < {piece.length})")
        cid = codec.chunk_id(raw)
        tally = self.tally
        if cid == codec.zero_id(piece.length):
            cid = ZERO_CHUNK
        else:
            staged = tally.staged.get(cid)  # one dict lookup: atomic without the lock
            if not (staged[1] if staged else self._stored_size(cid)):
                parts, compressed = codec.encode_measured(raw, self.store.min_saving)
                size = sum(len(part) for part in parts)
                tmp = self.store.chunks.stage(cid, parts)
                with tally.lock:
                    kept = tally.staged.setdefault(cid, (tmp, size))[0]
                    tally.policy_sizes.setdefault(cid, (codec.HEADER.size + piece.length, compressed))
                    tally.staged_bytes += size
                if kept != tmp:  # another thread staged the same chunk first
                    tmp.unlink()
            if self.hot is not None and not self.hot.has(cid):
                self.hot.add(cid, raw)
                with tally.lock:
                    tally.hot_added.add(cid)
        with tally.lock:
            tally.done += piece.length
            done = tally.done
        self.progress(done)
        return ChunkRef(cid, piece.length)
