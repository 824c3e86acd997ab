"""Read each chunk once, write it to many places: image files for CRIU, or the memory
of restored processes (restic's restorer: plan per chunk, then execute in parallel).

A ``Router`` collects, per chunk of the snapshot, every slice of it that goes
somewhere (``Target``); ``Delivery.run`` reads each routed chunk once,
verified, and writes its slices with pwrite (files) or process_vm_writev
(memory). Its threads take batches of consecutive routes (``BATCH_BYTES`` of
chunks): a batch is read and decoded in few calls (``read_chunks``), every
chunk of it hashed against its id, and only then written, with one
process_vm_writev per process for the whole batch (pieces adjacent in the
batch's buffer and in the process merged): the interpreter works per batch,
not per chunk, and a corrupt chunk stops its batch before any of it is
written. A chunk that cannot be read raises ChunkCorrupt naming the snapshot,
file and offset (ManifestDamaged when the chunk is intact but of another
length than the manifest says); a process that refuses a write raises
InjectFailed.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import structlog

from snapd_daemon.errors import InjectFailed
from snapd_daemon.host import memwrite
from snapd_daemon.snapshots.catalog import chunk_corrupt
from snapd_daemon.snapshots.manifest import ImageEntry, Manifest
from snapd_daemon.store.model import ZERO_CHUNK, ChunkRef, ChunkUnreadable, chunk_offsets
from snapd_daemon.store.protocol import ChunkReader
from snapd_daemon.util.buffers import ReadBuffers

log = structlog.get_logger()
_ZEROS = bytes(4 << 20)
# How far (raw bytes) the readahead runs ahead of the delivery threads, and how often
# it looks whether they caught up.
READAHEAD_BYTES = 512 << 20
READAHEAD_POLL = 0.002
# How much a readahead started before its delivery (``Delivery.read_ahead``) may issue
# while nothing is delivered yet: about what the disk reads while CRIU restores a tree.
EARLY_BYTES = 2 << 30
# At most this many bytes of chunks a thread reads, verifies and writes as one batch
# (less when the routes are too few to give every thread a batch): each thread holds
# twice this in buffers while it delivers. Larger batches make fewer calls but write
# from memory the caches may no longer hold; on the 2-core CI VM 2, 4 and 16 MiB ran
# alike (1.75-1.77 GB/s from the RAM tier): measure on the GPU host with
# scripts/bench/inject.py --batch-mb.
BATCH_BYTES = 4 << 20
# How often a delivery reports progress and runs its check (seconds).
TICK = 0.05
Progress = Callable[[int], None]


class Target(NamedTuple):
    """Where a slice of a chunk goes: ``fd`` at file offset ``dest_offset``, or, when
    ``pid`` is set, that process's memory at address ``dest_offset``. A zero chunk
    is written only to targets with ``zero_fill`` (files keep holes, fresh
    anonymous memory is already zero). A tuple: a restore makes thousands of
    them while the clock runs."""

    chunk_offset: int
    length: int
    dest_offset: int
    fd: int = -1
    pid: int = 0
    zero_fill: bool = False


@dataclass(slots=True)
class Route:
    """One chunk of image ``file`` (at ``file_offset``) and where its bytes go."""

    ref: ChunkRef
    file: str
    file_offset: int
    targets: list[Target] = field(default_factory=list)

    @property
    def length(self) -> int:
        return sum(t.length for t in self.targets)


class ChunkIndex:
    """Which chunks of one image file cover a byte range."""

    def __init__(self, entry: ImageEntry) -> None:
        self.entry = entry
        self.starts = [offset for offset, _ in chunk_offsets(entry.chunks)]

    def cover(self, offset: int, length: int) -> Iterator[tuple[int, ChunkRef, int, int]]:
        """(chunk start, chunk, offset in chunk, bytes) for each chunk piece of the range."""
        i = bisect.bisect_right(self.starts, offset) - 1
        end = offset + length
        while offset < end:
            start, ref = self.starts[i], self.entry.chunks[i]
            n = min(end, start + ref.length) - offset
            yield start, ref, offset - start, n
            offset += n
            i += 1


@dataclass
class Router:
    """Collects targets per chunk so that each chunk is read and decoded once."""

    routes: dict[tuple[str, int], Route] = field(default_factory=dict)

    def add(self, index: ChunkIndex, offset: int, length: int, fd: int = -1, pid: int = 0,
            dest: int = 0, zero_fill: bool = False) -> None:
        for start, ref, in_chunk, n in index.cover(offset, length):
            route = self.routes.setdefault((index.entry.name, start), Route(ref, index.entry.name, start))
            route.targets.append(Target(in_chunk, n, dest + (start + in_chunk - offset), fd, pid, zero_fill))

    def take(self) -> list[Route]:
        routes = list(self.routes.values())
        self.routes.clear()
        return routes


class Delivery:
    """Delivers routes of one snapshot's chunks from ``store`` with ``threads`` threads.

    The threads take batches of routes in order from a shared counter; each
    reads into buffers of its own, reused for every batch, and counts what it
    delivered in a slot of its own. Nothing per chunk takes a lock: with 16 threads, every
    lock and every hand-off of the GIL is a queue (py-spy on the H200 host
    showed the threads waiting on a progress lock more than they worked), and the
    interpreter's work and GIL hand-offs per chunk are what batches cut. The
    calling thread watches: every ``TICK`` seconds it reports progress and runs
    ``check`` (a cancel), and it stops the threads at the first failure. When the
    chunks are cold (on disk, not in the page cache), a ``Readahead`` asks the
    store to start reading up to ``readahead_bytes`` ahead of the threads, so
    the disk has more reads in flight than there are threads; ``read_ahead``
    starts one before the delivery, for a caller with other work to do first.
    """

    def __init__(self, store: ChunkReader, manifest: Manifest, threads: int,
                 readahead_bytes: int = READAHEAD_BYTES) -> None:
        self.store = store
        self.manifest = manifest
        self.threads = threads
        self.readahead_bytes = readahead_bytes

    @contextlib.contextmanager
    def read_ahead(self, routes: list[Route]) -> Iterator[Readahead | None]:
        """A readahead of ``routes``' chunks started now, up to ``EARLY_BYTES`` before
        ``run`` (given it) delivers anything; None when they are not cold. Stopped at
        the end of the ``with`` block or of that ``run``, whichever comes first."""
        ahead = self._readahead_for(routes, EARLY_BYTES)
        if ahead is None:
            yield None
            return
        ahead.start()
        try:
            yield ahead
        finally:
            ahead.stop()

    def _readahead_for(self, routes: list[Route], early: int) -> Readahead | None:
        if self.readahead_bytes <= 0 or not routes:
            return None
        if not self.store.cold([r.ref.id for r in routes if r.ref.id != ZERO_CHUNK]):
            return None
        log.info("delivery.readahead", chunks=len(routes), window_bytes=self.readahead_bytes, early_bytes=early)
        return Readahead(self.store, routes, self.readahead_bytes, early)

    def run(self, routes: list[Route], progress: Progress, check: Callable[[], None] | None = None,
            ahead: Readahead | None = None, probe: bool = True, writer: Writer | None = None) -> None:
        """Deliver every route (memory targets through ``writer``, by default process_vm_writev
        in address order); ``progress`` receives the bytes delivered so far; ``check``
        runs every tick (raising from it stops the delivery, and is what this raises);
        ``ahead``: the readahead ``read_ahead`` started for these routes (else, with
        ``probe``, one is started here if they are cold; a caller whose ``read_ahead``
        found them hot passes ``probe=False``). The caller holds the store lock shared."""
        if not routes:
            return
        work = _Work(routes, self.threads, writer or ProcessWriter(self.manifest.id))
        threads = [threading.Thread(target=self._worker, args=(work, slot), name=f"deliver-{slot}", daemon=True)
                   for slot in range(len(work.done))]
        if ahead is None and probe:
            ahead = self._readahead_for(routes, 0)
        with self.store.translate_os_errors(sum(r.length for r in routes)):
            for t in threads:
                t.start()
            if ahead is not None:
                ahead.follow(lambda: sum(work.done))
                ahead.start()
            try:
                while any(t.is_alive() for t in threads):
                    work.stop.wait(TICK)
                    if work.failure is None and check is not None:
                        check()
                    if work.failure is None:
                        progress(sum(work.done))
            except BaseException as exc:
                work.fail(exc)
                raise
            finally:
                work.stop.set()
                if ahead is not None:
                    ahead.stop()
                for t in threads:
                    t.join()
            if work.failure is not None:
                raise work.failure
        progress(sum(work.done))

    def _worker(self, work: _Work, slot: int) -> None:
        buffers = ReadBuffers()
        try:
            while not work.stop.is_set():
                i = work.order()
                if i >= len(work.batches):
                    return
                batch = work.batches[i]
                self._deliver(i, batch, buffers, work.writer)
                work.done[slot] += sum(route.length for route in batch)
        except BaseException as exc:
            work.fail(exc)

    def _deliver(self, index: int, batch: list[Route], buffers: ReadBuffers, writer: Writer) -> None:
        """Read and verify every chunk of ``batch`` (number ``index``), then write them: files
        with pwrite, the pieces for processes' memory with one ``writer.write``."""
        reads = [route for route in batch if route.ref.id != ZERO_CHUNK]
        try:
            raws = iter(self.store.read_chunks([route.ref for route in reads], buffers))
        except ChunkUnreadable as err:
            route = next(r for r in reads if r.ref.id == err.cid)
            raise chunk_corrupt(self.manifest, err, (route.file, route.file_offset)) from err
        memory: dict[int, list[tuple[int, memoryview | int]]] = {}
        for route in batch:
            zero = route.ref.id == ZERO_CHUNK
            raw = memoryview(_ZEROS) if zero else next(raws)
            for t in route.targets:
                if t.pid and zero and writer.zero_pages:
                    memory.setdefault(t.pid, []).append((t.dest_offset, t.length))
                    continue
                if zero and not t.zero_fill:
                    continue
                data = raw[t.chunk_offset : t.chunk_offset + t.length]
                if t.pid:
                    memory.setdefault(t.pid, []).append((t.dest_offset, data))
                else:
                    os.pwrite(t.fd, data, t.dest_offset)
        if memory:
            writer.write(index, memory)


class Writer(Protocol):
    """Where a delivery's memory pieces go, and in which order its batches are taken."""

    # zero chunks reach ``write`` for every memory target, as the length of the zeros
    zero_pages: bool

    def order(self, batches: list[list[Route]], stop: threading.Event) -> Callable[[], int]:
        """A thread-safe source of the next batch number to take (len(batches) or more: none left;
        one that waits for a batch returns that once ``stop``, the delivery's end, is set)."""
        ...

    def write(self, index: int, memory: dict[int, list[tuple[int, memoryview | int]]]) -> None:
        """Write batch ``index``'s verified pieces, (address, data or a length of zeros) per pid, each
        pid's in order."""
        ...


@dataclass
class ProcessWriter:
    """Batches in address order, written with process_vm_writev into stopped processes;
    a refused write is InjectFailed."""

    snapshot_id: str
    zero_pages: bool = False

    def order(self, batches: list[list[Route]], stop: threading.Event) -> Callable[[], int]:
        return itertools.count().__next__

    def write(self, index: int, memory: dict[int, list[tuple[int, memoryview | int]]]) -> None:
        for pid, pieces in memory.items():
            try:
                memwrite.write_many(pid, pieces)  # type: ignore[arg-type]  # all data: zero_pages is off
            except memwrite.WriteRefused as exc:
                raise InjectFailed(pid=pid, address=f"{exc.address:#x}", length=exc.length,
                                   reason=exc.strerror or str(exc), snapshot_id=self.snapshot_id) from exc


class Readahead:
    """A thread asking the store to start reading routes' chunks, in their order, at
    most ``window`` bytes ahead of what ``follow``'s count says is delivered, and
    up to ``early`` bytes while nothing is followed yet. Advice only: a chunk it
    cannot open is left to the delivery's own read. ``start`` and ``stop`` may be
    called more than once."""

    def __init__(self, store: ChunkReader, routes: list[Route], window: int, early: int) -> None:
        self.store = store
        self.routes = routes
        self.window = window
        self.early = early
        self._delivered: Callable[[], int] | None = None
        self._stop = threading.Event()
        self._woken = threading.Event()  # set by follow and stop: the early wait needs no polling
        self._thread = threading.Thread(target=self._issue, name="readahead", daemon=True)

    def follow(self, delivered: Callable[[], int]) -> None:
        self._delivered = delivered
        self._woken.set()

    def start(self) -> None:
        if self._thread.ident is None:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._woken.set()
        if self._thread.ident is not None:
            self._thread.join()

    def _wait(self, issued: int) -> bool:
        """Wait while ``issued`` bytes are far enough ahead; False when stopped meanwhile."""
        while True:
            delivered = self._delivered
            if delivered is None:
                if issued < self.early:
                    return not self._stop.is_set()
                self._woken.wait()
            elif issued - delivered() < self.window:
                return not self._stop.is_set()
            elif self._stop.wait(READAHEAD_POLL):
                return False
            if self._stop.is_set():
                return False

    def _issue(self) -> None:
        issued = 0
        for route in self.routes:
            if not self._wait(issued):
                return
            if route.ref.id != ZERO_CHUNK:
                self.store.readahead(route.ref.id)
            issued += route.length


class _Work:
    """What the threads of one ``Delivery.run`` share: the routes in batches, the next batch
    to take (``order()``, the writer's), bytes delivered per thread slot, the first failure."""

    def __init__(self, routes: list[Route], threads: int, writer: Writer) -> None:
        self.batches = _batches(routes, threads)
        self.writer = writer
        self.stop = threading.Event()
        self.order = writer.order(self.batches, self.stop)
        self.done = [0] * min(threads, len(self.batches))
        self.failure: BaseException | None = None
        self._lock = threading.Lock()

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            if self.failure is None:
                self.failure = exc
        self.stop.set()


def _batches(routes: list[Route], threads: int) -> list[list[Route]]:
    """``routes`` in order, cut into batches of at most ``BATCH_BYTES`` of chunks (one
    chunk at least), or smaller so that each of ``threads`` threads gets one."""
    limit = min(BATCH_BYTES, -(-sum(r.ref.length for r in routes) // threads))
    batches: list[list[Route]] = []
    size = limit
    for route in routes:
        if size + route.ref.length > limit:
            batches.append([])
            size = 0
        batches[-1].append(route)
        size += route.ref.length
    return batches
