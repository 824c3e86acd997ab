"""Where CRIU image files are cut into chunks (handed to the store's ingest as pieces).

Pages images are cut on a 2 MiB grid anchored at the start of each memory
mapping (VMA), at mapping edges, and wherever the pages in the file stop being
contiguous in memory. The same memory in a mapping of the same shape — model
weights, a zeroed KV cache, the driver's host copy of VRAM — then yields the
same chunks in every snapshot and every process, wherever it sits in the
pages file and whatever the mapping's alignment (ASLR places mappings at page,
not 2 MiB, granularity, so an absolute address grid would miss them). This
costs nothing to compute, which content-defined chunking would, at 15+ GB a
dump. Other images are small (metadata) and are cut at fixed offsets.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from pathlib import Path

from snapd_daemon.criu.images import PagesImage, pages_images, read_vmas
from snapd_daemon.host import procmaps
from snapd_daemon.store.model import Piece

GRID = 2 << 20


def merge_runs(runs: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Join runs contiguous both in address and in the file.

    CRIU splits one mapping's pages into entries of at most its page-pipe size
    (1 MiB seen here), at points that differ from dump to dump; cutting there
    would make identical memory yield different chunks.
    """
    merged: list[tuple[int, int, int]] = []
    for vaddr, length, offset in runs:
        if merged:
            pv, pl, po = merged[-1]
            if pv + pl == vaddr and po + pl == offset:
                merged[-1] = (pv, pl + length, po)
                continue
        merged.append((vaddr, length, offset))
    return merged


Region = tuple[int, int]


def cut_runs(runs: list[tuple[int, int, int]], regions: Sequence[Region] = (), grid: int = GRID) -> list[Piece]:
    """Pieces for runs of (vaddr, length, file offset): cut at region (mapping) edges
    and every ``grid`` bytes from the start of the region; outside any known
    region, on the absolute address grid. ``regions`` are sorted and disjoint."""
    starts = [r[0] for r in regions]
    pieces = []
    for vaddr, length, offset in merge_runs(runs):
        end = vaddr + length
        while vaddr < end:
            i = bisect.bisect_right(starts, vaddr) - 1
            if i >= 0 and vaddr < regions[i][1]:
                anchor, limit = regions[i]
            else:
                anchor = 0
                limit = regions[i + 1][0] if i + 1 < len(regions) else end
            line = anchor + ((vaddr - anchor) // grid + 1) * grid
            step = min(end, limit, line) - vaddr
            pieces.append(Piece(offset, step))
            vaddr += step
            offset += step
    return pieces


def settled_pieces(
    runs: list[tuple[int, int, int]], available: int, regions: Sequence[Region] = (), grid: int = GRID
) -> list[Piece]:
    """The pieces ``cut_runs`` will produce for a pages file still being written, as
    far as they cannot change any more: ``runs`` are the runs known so far and
    ``available`` the bytes of the file written so far.

    More runs can only extend the last known run (when contiguous) or follow it,
    which changes nothing but the last piece; pieces past ``available`` wait too.
    """
    pieces = cut_runs(runs, regions, grid)[:-1]
    settled = []
    for piece in pieces:
        if piece.offset + piece.length > available:
            break
        settled.append(piece)
    return settled


def cut_fixed(size: int, grid: int = GRID) -> list[Piece]:
    return [Piece(off, min(grid, size - off)) for off in range(0, size, grid)]


def vma_regions(images_dir: Path, pid: int) -> list[Region]:
    """The mappings of process ``pid`` as recorded in its ``mm-<pid>.img`` ([] if absent)."""
    path = images_dir / f"mm-{pid}.img"
    return sorted((v.start, v.end) for v in read_vmas(path)) if path.exists() else []


def live_regions(pid: int) -> list[Region]:
    """The mappings of a live process from /proc ([] if it is gone)."""
    try:
        return sorted((e.start, e.end) for e in procmaps.read(pid))
    except OSError:
        return []


def plan(images_dir: Path, images: list[PagesImage] | None = None) -> dict[str, list[Piece]]:
    """Pieces of every file in a CRIU image directory, keyed by file name; ``images``:
    its pages images, when already read (``pages_images``).

    Every byte of every file is covered exactly once, in order.
    """
    pages = {
        img.pages_file: cut_runs([(r.vaddr, r.length, r.offset) for r in img.runs], vma_regions(images_dir, img.pid))
        for img in (pages_images(images_dir) if images is None else images)
    }
    result = {}
    for path in sorted(images_dir.iterdir()):
        size = path.stat().st_size
        pieces = pages.get(path.name)
        if pieces is None or sum(p.length for p in pieces) != size:
            pieces = cut_fixed(size)
        result[path.name] = pieces
    return result
