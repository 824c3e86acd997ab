"""Restore faster than stock CRIU: hand CRIU a trimmed image, fill big regions ourselves.

Stock `criu restore` copies every page through one serial read loop. Here the
large private anonymous regions of each process (the driver's host copy of
VRAM, model weights, a KV cache) are cut out of the image CRIU sees: their
pagemap entries and page bytes are removed, so CRIU maps them as fresh, zeroed
anonymous memory. Once CRIU has restored the tree (every task left stopped,
none has run) snapd writes their bytes straight from the store into the processes with
process_vm_writev, in parallel, one chunk decode per 2 MiB; all-zero chunks are
not written at all. Everything else (small regions, file-backed pages, all
other images) goes to CRIU as usual.

A region is cut out only if it is private, anonymous, writable and at least
``min_region`` bytes. A child forked without exec may inherit such a region
from its parent with the parent's content; there zero chunks are written
explicitly so the child never sees its parent's bytes.
"""

from __future__ import annotations

import bisect
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import structlog

from snapd_daemon.criu.images import (
    FILES_NAME,
    Vma,
    adjust_files,
    advise_hugepages,
    pages_images,
    read_vmas,
    write_pagemap,
)
from snapd_daemon.restore.delivery import ChunkIndex, Delivery, Progress, Route, Router
from snapd_daemon.snapshots.manifest import Manifest

log = structlog.get_logger()
PROT_WRITE = 0x2
MAP_PRIVATE = 0x02
MAP_ANONYMOUS = 0x20
VMA_AREA_REGULAR = 1 << 0
VMA_ANON_PRIVATE = 1 << 9


def injectable(vma: Vma, min_region: int) -> bool:
    """A region snapd injects itself (``min_region`` 0: none)."""
    return (
        min_region > 0
        and vma.end - vma.start >= min_region
        and vma.prot & PROT_WRITE != 0
        and vma.flags & (MAP_PRIVATE | MAP_ANONYMOUS) == MAP_PRIVATE | MAP_ANONYMOUS
        and vma.status & (VMA_AREA_REGULAR | VMA_ANON_PRIVATE) == VMA_AREA_REGULAR | VMA_ANON_PRIVATE
    )


@dataclass(frozen=True)
class Span:
    """``length`` bytes at ``offset`` of a pages image, belonging at ``vaddr``."""

    vaddr: int
    offset: int
    length: int


def split_runs(
    runs: list[tuple[int, int, int]], regions: list[tuple[int, int]]
) -> tuple[list[Span], list[Span]]:
    """Split page runs (vaddr, length, offset) into (kept for CRIU, injected) spans.

    ``regions`` are sorted, disjoint [start, end) address ranges to inject.
    """
    keep: list[Span] = []
    inject: list[Span] = []
    starts = [r[0] for r in regions]
    for vaddr, length, offset in runs:
        pos, end = vaddr, vaddr + length
        while pos < end:
            i = bisect.bisect_right(starts, pos) - 1
            inside = i >= 0 and pos < regions[i][1]
            if inside:
                stop = min(end, regions[i][1])
            else:
                nxt = regions[i + 1][0] if i + 1 < len(regions) else end
                stop = min(end, nxt)
            (inject if inside else keep).append(Span(pos, offset + pos - vaddr, stop - pos))
            pos = stop
    return keep, inject


@dataclass
class FastRestore:
    """The trimmed image written for CRIU, and the memory writes left for after CRIU."""

    memory: list[Route]
    injected_bytes: int
    kept_bytes: int


def _region_of(regions: list[tuple[int, int]], starts: list[int], vaddr: int) -> tuple[int, int]:
    """The region of the sorted, disjoint ``regions`` (``starts`` their starts) holding ``vaddr``."""
    return regions[bisect.bisect_right(starts, vaddr) - 1]


def prepare(delivery: Delivery, manifest: Manifest, dest: Path, min_region: int, progress: Progress,
            huge_pages: bool = False) -> FastRestore:
    """Write the snapshot's images into ``dest`` with the big regions cut out, without
    the recorded sizes of files open write-only (outputs grow), and with O_APPEND
    on the tree's outward stdout/stderr pipes (they will write to a restore log).

    Returns the memory writes to make (``Delivery.run``) once CRIU has restored
    the tree, before any task of it runs.
    """
    entries = {e.name: e for e in manifest.files}
    pages_names = {name for name in entries if name.startswith("pages-")}
    router = Router()
    fds: list[int] = []
    began = time.monotonic()
    try:
        for name, entry in entries.items():
            if name not in pages_names:
                fd = _create(dest / name, entry.size_bytes, fds)
                router.add(ChunkIndex(entry), 0, entry.size_bytes, fd=fd)
        delivery.run(router.take(), lambda _done: None)
        if (dest / FILES_NAME).exists():
            appended = {end.inode for end in manifest.outward_stdio if end.writes and end.kind == "pipe"}
            outputs = adjust_files(dest / FILES_NAME, appended)
            if outputs:
                log.info("restore.output_files_unpinned", files=outputs)
        written = time.monotonic()
        images = pages_images(dest)
        regions = {
            img.pid: [(v.start, v.end) for v in read_vmas(dest / f"mm-{img.pid}.img") if injectable(v, min_region)]
            for img in images
        }
        if huge_pages:
            for pid, spans in regions.items():
                advise_hugepages(dest / f"mm-{pid}.img", spans)
        memory = Router()
        injected = kept = 0
        planned: set[str] = set()
        # a region in more than one process's list came to a child from its parent
        shared = Counter(region for spans in regions.values() for region in spans)
        for img in images:
            index = ChunkIndex(entries[img.pages_file])
            mine = regions[img.pid]
            starts = [r[0] for r in mine]
            keep, inject = split_runs([(r.vaddr, r.length, r.offset) for r in img.runs], mine)
            fd = _create(dest / img.pages_file, sum(s.length for s in keep), fds)
            out = 0
            for span in keep:
                router.add(index, span.offset, span.length, fd=fd, dest=out)
                out += span.length
            for span in inject:
                memory.add(index, span.offset, span.length, pid=img.pid, dest=span.vaddr,
                           zero_fill=shared[_region_of(mine, starts, span.vaddr)] > 1)
            write_pagemap(dest / f"pagemap-{img.pid}.img", img.pages_id, [(s.vaddr, s.length) for s in keep])
            injected += sum(s.length for s in inject)
            kept += out
            planned.add(img.pages_file)
        for name in pages_names - planned:
            fd = _create(dest / name, entries[name].size_bytes, fds)
            router.add(ChunkIndex(entries[name]), 0, entries[name].size_bytes, fd=fd)
        planned_at = time.monotonic()
        delivery.run(router.take(), progress)
        log.info("restore.prepare_steps", other_images_s=round(written - began, 3),
                 plan_s=round(planned_at - written, 3), kept_pages_s=round(time.monotonic() - planned_at, 3),
                 kept_bytes=kept, images=len(entries))
    finally:
        for fd in fds:
            os.close(fd)
    return FastRestore(memory=memory.take(), injected_bytes=injected, kept_bytes=kept)


def _create(path: Path, size: int, fds: list[int]) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    fds.append(fd)
    os.ftruncate(fd, size)
    return fd
