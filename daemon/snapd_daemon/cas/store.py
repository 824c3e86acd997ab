"""The snapshot store: manifests over content-addressed chunks, with GC and fsck.

Layout under the state directory::

    chunks/ab/<blake3>   write-once chunk files (see chunkfile)
    manifests/<id>.json  one per complete snapshot, written last
    pins/<id>            pinned snapshots (GC and rm leave them alone)
    staging/<operation>/ CRIU images being dumped or restored (or the same under
                         the RAM scratch directory); never listed

Write order for a snapshot: chunks under temporary names -> one syncfs -> final
names (links) -> chunk directories fsynced
-> manifest (tmp, fsync, rename, fsync dir). A crash at any point leaves the
whole snapshot or none of it; chunks of an unfinished snapshot are orphans
that GC reclaims. Operations that write or read chunks hold the store lock
shared; GC and delete hold it exclusive, so they never remove a chunk that an
in-flight checkpoint has written but not yet published.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from snapd_daemon import memwrite
from snapd_daemon.cas import chunkfile
from snapd_daemon.cas.chunking import Piece, plan
from snapd_daemon.cas.chunks import ChunkStore
from snapd_daemon.cas.hot import HotTier
from snapd_daemon.cas.rwlock import RWLock
from snapd_daemon.errors import (
    ChunkCorrupt,
    InjectFailed,
    SnapshotNotFound,
    SnapshotPinned,
    StoreError,
    StoreFull,
)
from snapd_daemon.fsutil import fsync_path, syncfs, write_atomic
from snapd_daemon.manifest import ZERO_CHUNK, ChunkRef, ImageEntry, Manifest
from snapd_daemon.poller import Poller

log = structlog.get_logger()
_ZEROS = bytes(4 << 20)
Progress = Callable[[int], None]


@dataclass(frozen=True)
class Staging:
    """A private directory for one operation: CRIU images in ``images``, logs in ``work``."""

    root: Path

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def work(self) -> Path:
        return self.root / "work"


@dataclass(frozen=True)
class Scratch:
    """Where staging directories go: RAM (tmpfs) when it has room, else the state disk.

    CRIU writes a dump once into staging and snapd reads it once to chunk it; on
    tmpfs that round trip never touches the disk, which then only receives the
    compressed, deduplicated chunks. ``mode`` is "auto", "ram" or "disk".
    """

    disk: Path
    ram: Path | None
    mode: str = "auto"
    # RAM staging needs this multiple of the expected size free, in tmpfs and MemAvailable.
    headroom: float = 1.5

    def roots(self) -> list[Path]:
        return [p for p in (self.disk, self.ram) if p is not None]

    def in_ram(self, staging: Staging) -> bool:
        return self.ram is not None and staging.root.is_relative_to(self.ram)

    def choose(self, needed: int, ram_besides: int = 0) -> Path:
        """RAM or disk for ``needed`` bytes of images; ``ram_besides``: RAM the operation
        will take on top of them, not available yet (a CUDA checkpoint's host copy of VRAM)."""
        if self.ram is None or self.mode == "disk":
            return self.disk
        if self.mode == "ram":
            return self.ram
        self.ram.mkdir(parents=True, exist_ok=True)
        room = min(shutil.disk_usage(self.ram).free, _mem_available() - ram_besides)
        return self.ram if room >= needed * self.headroom + (1 << 30) else self.disk


def _mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class GcPlan:
    expired: list[str] = field(default_factory=list)
    chunks: int = 0
    bytes: int = 0
    dry_run: bool = True


@dataclass(frozen=True)
class Target:
    """Where a slice of a chunk goes: ``fd`` at file offset ``dest_offset``, or, when
    ``pid`` is set, that process's memory at address ``dest_offset``. A zero chunk
    is written only to targets with ``zero_fill`` (files keep holes, fresh
    anonymous memory is already zero)."""

    chunk_offset: int
    length: int
    dest_offset: int
    fd: int = -1
    pid: int = 0
    zero_fill: bool = False


@dataclass
class Route:
    """One chunk of image ``file`` (at ``file_offset``) and where its bytes go."""

    ref: ChunkRef
    file: str
    file_offset: int
    targets: list[Target] = field(default_factory=list)


@dataclass(frozen=True)
class Damage:
    snapshot_id: str
    file: str
    offset: int
    chunk: str
    problem: str


@dataclass
class FsckReport:
    snapshots: int = 0
    chunks_checked: int = 0
    bytes_checked: int = 0
    damage: list[Damage] = field(default_factory=list)
    orphan_chunks: int = 0


@dataclass
class _IngestTally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: int = 0
    # chunks written by this ingest, not yet published: id -> (temporary path, size)
    staged: dict[str, tuple[Path, int]] = field(default_factory=dict)
    # chunks this ingest put in the hot tier (removed again if it aborts)
    hot_added: set[str] = field(default_factory=set)
    staged_bytes: int = 0


class SnapshotStore:
    def __init__(self, root: Path, scratch: Scratch, threads: int, hot: HotTier | None = None) -> None:
        self.root = root
        self.scratch = scratch
        self.threads = threads
        self.hot = hot
        self.chunks = ChunkStore(root / "chunks")
        self.manifests_dir = root / "manifests"
        self.pins_dir = root / "pins"
        for d in (self.manifests_dir, self.pins_dir, *scratch.roots()):
            d.mkdir(parents=True, exist_ok=True)
        self.lock = RWLock()
        self._index_lock = threading.Lock()
        self._manifests: dict[str, Manifest] = {}

    # -- start-up -------------------------------------------------------------

    def recover(self) -> None:
        """Load manifests; remove staging leftovers and every temporary file a crash left.

        Must run before the daemon accepts requests.
        """
        for scratch in self.scratch.roots():
            for leftover in sorted(scratch.iterdir()):
                shutil.rmtree(leftover, ignore_errors=True)
        for directory in (self.manifests_dir, self.pins_dir):
            for tmp in directory.glob(".*.tmp-*"):  # write_atomic's temporaries of a crash
                tmp.unlink()
        self.chunks.remove_temporaries()
        for path in self.manifests_dir.glob("*.json"):
            m = Manifest.from_json(path.read_text())
            self._manifests[m.id] = m

    # -- staging --------------------------------------------------------------

    def new_staging(self, operation_id: str, needed: int, ram_besides: int = 0) -> Staging:
        with self.translate_os_errors(needed):
            staging = Staging(self.scratch.choose(needed, ram_besides) / operation_id)
            staging.images.mkdir(parents=True)
            staging.work.mkdir()
        return staging

    def discard(self, staging: Staging) -> None:
        """Remove a staging directory in the background (gigabytes of tmpfs take a
        noticeable time to free; nobody waits for it). A crash meanwhile leaves it
        to ``recover``."""
        threading.Thread(target=shutil.rmtree, args=(staging.root, True), name="discard", daemon=True).start()

    def release_scratch(self) -> None:
        """Remove the (empty) RAM staging directory when the daemon stops; the hot tier stays."""
        if self.scratch.ram is not None:
            with contextlib.suppress(OSError):
                self.scratch.ram.rmdir()
                self.scratch.ram.parent.rmdir()

    def staging_full(self, staging: Staging, needed: int) -> StoreFull | None:
        """A StoreFull error if the staging file system has (nearly) no space left."""
        free = shutil.disk_usage(staging.root).free
        return StoreFull(path=staging.root.parent, needed=needed, free=free) if free < 4 << 20 else None

    @contextmanager
    def translate_os_errors(self, needed: int) -> Iterator[None]:
        """Turn ENOSPC/EDQUOT into StoreFull and other OS errors into StoreError."""
        try:
            yield
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                where = Path(exc.filename).parent if exc.filename else self.root
                raise StoreFull(path=where, needed=needed, free=self.free_bytes()) from exc
            raise StoreError(path=self.root, reason=str(exc)) from exc

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    # -- writing --------------------------------------------------------------

    def begin_ingest(self, images: Path, progress: Progress, keep_hot: bool = False,
                     hot_ram_needed: int = 0) -> Ingest:
        """Start storing the dump in ``images``: pieces can be handed in while CRIU
        still writes (``Ingest.submit``); ``Ingest.finish`` stores the rest and
        publishes. Holds the store lock shared until finished or aborted.
        ``keep_hot``: also put the raw chunks in the hot tier, as a prefetch would;
        refused (StoreFull) unless RAM has room for ``hot_ram_needed`` bytes more."""
        if keep_hot and self.hot is None:
            raise StoreError(path=self.root, reason="no RAM directory is configured for the hot tier")
        if keep_hot:
            free = min(self.hot.free_bytes(), _mem_available())
            if hot_ram_needed + (1 << 30) > free:
                raise StoreFull(path=self.hot.root, needed=hot_ram_needed, free=free)
        return Ingest(self, images, progress, self.hot if keep_hot else None)

    def _publish(self, manifest: Manifest, tally: _IngestTally) -> Manifest:
        """Publish the chunks ``manifest`` uses, then the manifest. Caller holds the lock shared.

        Staged chunks the manifest does not use (from redone pieces) are removed.
        Sizes are counted per distinct chunk."""
        used = manifest.chunk_ids()
        for cid in [c for c in tally.staged if c not in used]:
            tally.staged.pop(cid)[0].unlink(missing_ok=True)
        synced = time.monotonic()
        added = self.chunks.publish({cid: tmp for cid, (tmp, _) in tally.staged.items()})
        self.chunks.sync_prefixes(used - added)  # chunks another writer linked: their entries durable too
        log.info("store.chunks_published", new_chunks=len(added), seconds=round(time.monotonic() - synced, 3))
        sizes = {cid: tally.staged[cid][1] if cid in tally.staged else self.chunks.exists(cid) for cid in used}
        manifest.stored_bytes = sum(sizes.values())
        manifest.new_bytes = sum(sizes[cid] for cid in added)
        write_atomic(self.manifests_dir / f"{manifest.id}.json", manifest.to_json().encode())
        with self._index_lock:
            self._manifests[manifest.id] = manifest
        return manifest

    def _ingest(
        self, fd: int, piece: Piece, tally: _IngestTally, progress: Progress, hot: HotTier | None
    ) -> ChunkRef:
        raw = os.pread(fd, piece.length, piece.offset)
        if len(raw) != piece.length:
            raise StoreError(path=self.root, reason=f"image shrank while being read ({len(raw)} < {piece.length})")
        cid, size = chunkfile.chunk_id(raw), 0
        if cid == chunkfile.zero_id(len(raw)):
            cid = ZERO_CHUNK
        else:
            with tally.lock:
                size = tally.staged[cid][1] if cid in tally.staged else self.chunks.exists(cid)
            if not size:
                header, payload = chunkfile.encode(raw)
                size = len(header) + len(payload)
                tmp = self.chunks.stage(cid, header, payload)
                with tally.lock:
                    kept = tally.staged.setdefault(cid, (tmp, size))[0]
                    tally.staged_bytes += size
                if kept != tmp:  # another thread staged the same chunk first
                    tmp.unlink()
            if hot is not None and not hot.has(cid):
                hot.add(cid, raw)
                with tally.lock:
                    tally.hot_added.add(cid)
        with tally.lock:
            tally.done += piece.length
            done = tally.done
        progress(done)
        return ChunkRef(cid, piece.length)

    # -- reading --------------------------------------------------------------

    def list(self, name: str = "") -> list[Manifest]:
        """Complete snapshots, oldest first; only those named ``name`` if given."""
        with self._index_lock:
            found = [m for m in self._manifests.values() if not name or m.name == name]
        return sorted(found, key=lambda m: (m.created, m.id))

    def get(self, ref: str) -> Manifest:
        """A snapshot by id, else the newest snapshot named ``ref``."""
        with self._index_lock:
            if ref in self._manifests:
                return self._manifests[ref]
        named = self.list(name=ref)
        if not named:
            raise SnapshotNotFound(snapshot=ref)
        return named[-1]

    def is_pinned(self, snapshot_id: str) -> bool:
        return (self.pins_dir / snapshot_id).exists()

    def deliver(self, manifest: Manifest, routes: list[Route], progress: Progress) -> None:
        """Read each routed chunk once, verified, and write its slices to their targets, in parallel.

        Raises ChunkCorrupt naming the first bad chunk, InjectFailed when a process
        refuses a write. ``progress`` receives the bytes delivered so far.
        """
        tally = _IngestTally()
        with self.lock.shared(), self.translate_os_errors(sum(t.length for r in routes for t in r.targets)):
            with ThreadPoolExecutor(self.threads, thread_name_prefix="deliver") as pool:
                jobs = [pool.submit(self._deliver_one, manifest, r, tally, progress) for r in routes]
                try:
                    for job in jobs:
                        job.result()
                finally:
                    for job in jobs:
                        job.cancel()

    def _deliver_one(self, manifest: Manifest, route: Route, tally: _IngestTally, progress: Progress) -> None:
        zero = route.ref.id == ZERO_CHUNK
        raw = memoryview(_ZEROS if zero else self.read_chunk(manifest, route.file, route.file_offset, route.ref))
        for t in route.targets:
            if zero and not t.zero_fill:
                continue
            data = raw[t.chunk_offset : t.chunk_offset + t.length]
            if t.pid:
                try:
                    memwrite.write(t.pid, t.dest_offset, data)
                except OSError as exc:
                    raise InjectFailed(pid=t.pid, address=f"{t.dest_offset:#x}", length=t.length, reason=exc.strerror
                                       or str(exc), snapshot_id=manifest.id) from exc
            else:
                os.pwrite(t.fd, data, t.dest_offset)
        with tally.lock:
            tally.done += sum(t.length for t in route.targets)
            done = tally.done
        progress(done)

    def read_chunk(
        self, manifest: Manifest, name: str, offset: int, ref: ChunkRef, hot: bool = True
    ) -> bytes | memoryview:
        """Verified bytes of a chunk: from the hot tier when it has them, else from disk."""
        if hot and self.hot is not None:
            view = self.hot.read(ref.id)
            if view is not None:
                return view
        try:
            return self.chunks.read(ref.id)
        except FileNotFoundError:
            problem = "missing"
        except chunkfile.ChunkDecodeError as exc:
            problem = f"corrupt ({exc})"
        raise ChunkCorrupt(snapshot_id=manifest.id, chunk=ref.id, file=name, offset=offset, problem=problem)

    # -- hot tier -------------------------------------------------------------

    def prefetch(self, manifest: Manifest, progress: Progress) -> int:
        """Put the snapshot's chunks, decompressed and verified, in the hot tier; bytes added."""
        if self.hot is None:
            raise StoreError(path=self.root, reason="no RAM directory is configured for the hot tier")
        hot = self.hot
        refs = {ref.id: (entry.name, offset, ref) for entry in manifest.files
                for offset, ref in chunk_offsets(entry.chunks) if ref.id != ZERO_CHUNK}
        missing = [(cid, where) for cid, where in refs.items() if not hot.has(cid)]
        needed = sum(where[2].length for _, where in missing)
        if needed + (1 << 30) > hot.free_bytes():
            raise StoreFull(path=hot.root, needed=needed, free=hot.free_bytes())
        tally = _IngestTally()

        def one(item: tuple[str, tuple[str, int, ChunkRef]]) -> None:
            cid, (name, offset, ref) = item
            hot.add(cid, self.read_chunk(manifest, name, offset, ref, hot=False))
            with tally.lock:
                tally.done += ref.length
                done = tally.done
            progress(done)

        hot.mark(manifest.id, set(refs))  # first, so no concurrent drop removes what this adds
        try:
            with self.lock.shared(), self.translate_os_errors(needed):
                with ThreadPoolExecutor(self.threads, thread_name_prefix="prefetch") as pool:
                    list(pool.map(one, missing))
        except BaseException:
            hot.unmark(manifest.id)
            raise
        return needed

    def drop_prefetch(self, manifest: Manifest) -> int:
        return self.hot.unmark(manifest.id) if self.hot is not None else 0

    def is_hot(self, snapshot_id: str) -> bool:
        return self.hot is not None and (self.hot.snapshots_dir / snapshot_id).exists()

    # -- space ----------------------------------------------------------------

    def pin(self, manifest: Manifest, pinned: bool) -> None:
        path = self.pins_dir / manifest.id
        if pinned:
            write_atomic(path, b"")
        else:
            path.unlink(missing_ok=True)
            fsync_path(self.pins_dir)

    def delete(self, manifest: Manifest) -> int:
        """Remove a snapshot and the chunks only it used; returns the bytes freed."""
        if self.is_pinned(manifest.id):
            raise SnapshotPinned(snapshot_id=manifest.id)
        with self.lock.exclusive():
            self._unpublish(manifest.id)
            self.drop_prefetch(manifest)
            return self._remove_chunks(manifest.chunk_ids() - self._live_chunks())

    def gc(self, keep_last: int, dry_run: bool, busy: frozenset[str] = frozenset()) -> GcPlan:
        """Plan, then (unless ``dry_run``) execute: expire snapshots beyond the newest
        ``keep_last`` of each name (0: keep all; pinned, unnamed and ``busy`` ones —
        those an operation is using — are kept), then remove every chunk no
        remaining snapshot references."""
        with self.lock.exclusive():
            result = GcPlan(dry_run=dry_run)
            if keep_last:
                by_name: dict[str, list[Manifest]] = {}
                for m in self.list():
                    if m.name:
                        by_name.setdefault(m.name, []).append(m)
                result.expired = [m.id for ms in by_name.values() for m in ms[:-keep_last]
                                  if not self.is_pinned(m.id) and m.id not in busy]
            with self._index_lock:
                live = {c for m in self._manifests.values() if m.id not in result.expired for c in m.chunk_ids()}
            doomed = [(cid, size) for cid, size in self.chunks.all() if cid not in live]
            result.chunks = len(doomed)
            result.bytes = sum(size for _, size in doomed)
            if not dry_run:
                for sid in result.expired:
                    self.drop_prefetch(self.get(sid))
                    self._unpublish(sid)
                self._remove_chunks({cid for cid, _ in doomed})
            return result

    def _unpublish(self, snapshot_id: str) -> None:
        (self.manifests_dir / f"{snapshot_id}.json").unlink()
        fsync_path(self.manifests_dir)
        with self._index_lock:
            del self._manifests[snapshot_id]


    def _live_chunks(self) -> set[str]:
        with self._index_lock:
            return {c for m in self._manifests.values() for c in m.chunk_ids()}

    def _remove_chunks(self, cids: set[str]) -> int:
        freed = 0
        for cid in cids:
            freed += self.chunks.exists(cid)
            self.chunks.remove(cid)
        return freed

    def disk_bytes(self) -> int:
        return sum(size for _, size in self.chunks.all())

    # -- integrity ------------------------------------------------------------

    def fsck(self, manifests: list[Manifest]) -> FsckReport:
        """Read and verify every chunk the given snapshots reference, on disk (not the hot tier)."""
        report = FsckReport(snapshots=len(manifests))
        users: dict[str, list[tuple[Manifest, str, int, ChunkRef]]] = {}
        for m in manifests:
            for entry in m.files:
                for offset, ref in chunk_offsets(entry.chunks):
                    if ref.id != ZERO_CHUNK:
                        users.setdefault(ref.id, []).append((m, entry.name, offset, ref))

        def check(cid: str) -> str:
            m, name, offset, ref = users[cid][0]
            try:
                self.read_chunk(m, name, offset, ref, hot=False)
            except ChunkCorrupt as err:
                return str(err.fields["problem"])
            return ""

        with self.lock.shared(), ThreadPoolExecutor(self.threads, thread_name_prefix="fsck") as pool:
            for cid, problem in zip(users, pool.map(check, users), strict=True):
                report.chunks_checked += 1
                report.bytes_checked += users[cid][0][3].length
                if problem:
                    report.damage += [Damage(m.id, name, off, cid, problem) for m, name, off, _ in users[cid]]
            live = self._live_chunks()
            report.orphan_chunks = sum(1 for cid, _ in self.chunks.all() if cid not in live)
        return report


def _yield_to_criu() -> None:
    """Run this ingest thread 10 nice levels below the daemon (at most 19): while
    CRIU dumps, the tree is frozen, and CRIU should win the CPU over storing what
    it already wrote. Best effort."""
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + 10))
    except OSError as err:
        log.warning("ingest.nice_failed", error=str(err))


class _Flusher(Poller):
    """Writes staged chunks to disk in the background while an ingest runs, so
    that the syncfs at publish finds little left to do: one syncfs per interval
    once ``threshold`` more bytes were staged. (A sync_file_range per chunk file
    in the writer threads did the same job at about 1.5x the host CPU on the CI
    VM, taken from CRIU and the hashing threads.) Durability still comes from
    the syncfs at publish."""

    def __init__(self, root: Path, tally: _IngestTally, interval: float = 0.1, threshold: int = 32 << 20) -> None:
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
            except OSError as err:  # the publish syncfs reports it, with the operation's error mapping
                log.warning("ingest.flush_failed", error=str(err))
                return False
            self.flushed = staged
        return True


class Ingest:
    """One snapshot's images going into the store, possibly while CRIU writes them.

    Pieces are submitted per file in order; ``finish`` checks that what was
    submitted early is exactly the start of the final plan (else it is redone
    from scratch, chunks already stored being reused), stores the rest, and
    publishes. The store lock is held shared from the start until the manifest
    is published (or ``abort``), so GC never sees chunks of an unpublished
    snapshot as orphans. Thread-safe for one submitter plus the finishing thread.
    Every Ingest must end in ``finish`` or ``abort``.
    """

    def __init__(self, store: SnapshotStore, images: Path, progress: Progress, hot: HotTier | None) -> None:
        self.store = store
        self.hot = hot
        self.images = images
        self.progress = progress
        self.tally = _IngestTally()
        self.pieces: dict[str, list[Piece]] = {}
        self.jobs: dict[str, list[Future[ChunkRef]]] = {}
        self.fds: dict[str, int] = {}
        self._lock = threading.Lock()
        self._shared = store.lock.shared()
        self._shared.__enter__()
        self.pool = ThreadPoolExecutor(store.threads, thread_name_prefix="ingest", initializer=_yield_to_criu)
        self._flusher: _Flusher | None = _Flusher(store.root, self.tally).__enter__()

    def submitted(self, name: str) -> int:
        with self._lock:
            return len(self.pieces.get(name, ()))

    def submit(self, name: str, pieces: list[Piece]) -> None:
        with self._lock:
            if name not in self.fds:
                self.fds[name] = os.open(self.images / name, os.O_RDONLY)
            fd = self.fds[name]
            self.pieces.setdefault(name, []).extend(pieces)
            self.jobs.setdefault(name, []).extend(
                self.pool.submit(self.store._ingest, fd, p, self.tally, self.progress, self.hot) for p in pieces
            )

    def finish(self, manifest: Manifest) -> Manifest:
        """Store whatever was not submitted yet, wait for all of it, publish ``manifest``."""
        final = plan(self.images)
        early_bytes = 0
        redone = []
        with self.store.translate_os_errors(sum(p.length for v in final.values() for p in v)):
            for name, cuts in final.items():
                with self._lock:
                    early = self.pieces.get(name, [])
                    stale = self.jobs.get(name, []) if cuts[: len(early)] != early else []
                    if stale:
                        self.pieces[name], self.jobs[name] = [], []
                        redone.append(name)
                        early = []
                for job in stale:  # let them end; their chunks are dropped at publish if unused
                    job.exception()
                early_bytes += sum(p.length for p in early)
                self.submit(name, cuts[len(early) :])
            log.info("ingest.plan", stored_while_dumping=early_bytes, redone=redone)
            waited = time.monotonic()
            manifest.files = [
                ImageEntry(name, sum(p.length for p in cuts), tuple(job.result() for job in self.jobs[name]))
                for name, cuts in final.items()
            ]
            log.info("ingest.stored", seconds_after_dump=round(time.monotonic() - waited, 3))
            self._stop_flusher()
            published = self.store._publish(manifest, self.tally)
            if self.hot is not None:
                self.hot.mark(manifest.id, manifest.chunk_ids())
        self._close()
        return published

    def abort(self) -> None:
        """Stop, and remove every chunk staged but not published (and its RAM copy)."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        for tmp, _ in self.tally.staged.values():
            tmp.unlink(missing_ok=True)
        if self.hot is not None:
            self.hot.discard_unheld(self.tally.hot_added)
        self._close()

    def _stop_flusher(self) -> None:
        if self._flusher is not None:
            self._flusher.__exit__(None, None, None)
            self._flusher = None

    def _close(self) -> None:
        self._stop_flusher()
        self.pool.shutdown(wait=True)
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        if self._shared is not None:
            self._shared.__exit__(None, None, None)
            self._shared = None


def chunk_offsets(chunks: tuple[ChunkRef, ...]) -> Iterator[tuple[int, ChunkRef]]:
    """(offset in the file, chunk) for each chunk of an image file."""
    offset = 0
    for ref in chunks:
        yield offset, ref
        offset += ref.length
