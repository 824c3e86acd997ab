"""Read each chunk once, write it to many places: image files for CRIU, or the memory
of restored processes (restic's restorer: plan per chunk, then execute in parallel).

A ``Router`` collects, per chunk of the snapshot, every slice of it that goes
somewhere (``Target``); ``Delivery.run`` reads each routed chunk once,
verified, and writes its slices with pwrite (files) or process_vm_writev
(memory). A chunk that cannot be read raises ChunkCorrupt naming the
snapshot, file and offset; a process that refuses a write raises InjectFailed.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from snapd_daemon.errors import ChunkCorrupt, InjectFailed
from snapd_daemon.host import memwrite
from snapd_daemon.snapshots.manifest import ImageEntry, Manifest
from snapd_daemon.store.model import ZERO_CHUNK, ChunkRef, ChunkUnreadable, chunk_offsets
from snapd_daemon.store.protocol import ChunkReader

_ZEROS = bytes(4 << 20)
Progress = Callable[[int], None]


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
    """Delivers routes of one snapshot's chunks from ``store`` with ``threads`` threads."""

    def __init__(self, store: ChunkReader, manifest: Manifest, threads: int) -> None:
        self.store = store
        self.manifest = manifest
        self.threads = threads

    def run(self, routes: list[Route], progress: Progress, before_each: Callable[[], None] | None = None) -> None:
        """Deliver every route; ``progress`` receives the bytes delivered so far;
        ``before_each`` runs before each route (raising from it stops the delivery).
        The caller holds the store lock shared."""
        lock = threading.Lock()
        done = [0]

        def one(route: Route) -> None:
            if before_each is not None:
                before_each()
            self._deliver(route)
            with lock:
                done[0] += route.length
                total = done[0]
            progress(total)

        with self.store.translate_os_errors(sum(r.length for r in routes)):
            with ThreadPoolExecutor(self.threads, thread_name_prefix="deliver") as pool:
                jobs = [pool.submit(one, r) for r in routes]
                try:
                    for job in jobs:
                        job.result()
                finally:
                    for job in jobs:
                        job.cancel()

    def _deliver(self, route: Route) -> None:
        zero = route.ref.id == ZERO_CHUNK
        try:
            raw = memoryview(_ZEROS if zero else self.store.read_chunk(route.ref.id))
        except ChunkUnreadable as err:
            raise ChunkCorrupt(snapshot_id=self.manifest.id, chunk=err.cid, file=route.file,
                               offset=route.file_offset, problem=err.problem) from err
        for t in route.targets:
            if zero and not t.zero_fill:
                continue
            data = raw[t.chunk_offset : t.chunk_offset + t.length]
            if t.pid:
                try:
                    memwrite.write(t.pid, t.dest_offset, data)
                except OSError as exc:
                    raise InjectFailed(pid=t.pid, address=f"{t.dest_offset:#x}", length=t.length,
                                       reason=exc.strerror or str(exc), snapshot_id=self.manifest.id) from exc
            else:
                os.pwrite(t.fd, data, t.dest_offset)
