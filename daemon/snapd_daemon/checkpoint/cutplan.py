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
from collections.abc import Iterable, Sequence
from pathlib import Path

from snapd_daemon.criu.images import PagesImage, pages_images, read_vmas
from snapd_daemon.host import procmaps
from snapd_daemon.store.model import Piece

GRID = 2 << 20


Region = tuple[int, int]
Run = tuple[int, int, int]  # vaddr, length, offset in the pages file


class GrowingCut:
    """Pieces for runs of (vaddr, length, file offset) that arrive in file order, a few
    at a time, as CRIU writes its page map: cut at region (mapping) edges and every
    ``grid`` bytes from the start of the region; outside any known region, on the
    absolute address grid. ``regions`` are sorted and disjoint.

    Runs contiguous both in address and in the file are joined first: CRIU splits one
    mapping's pages into entries of at most its page-pipe size (1 MiB seen here), at
    points that differ from dump to dump; cutting there would make identical memory
    yield different chunks.

    More runs can only extend the last one (when contiguous) or follow it, which
    changes nothing but the last piece: every piece before it is ``settled``. Each run
    is cut once, so following a dump costs O(its runs) in all, not O(runs) a poll."""

    def __init__(self, regions: Sequence[Region] = (), grid: int = GRID) -> None:
        self.regions = regions
        self.grid = grid
        self._starts = [r[0] for r in regions]
        self.settled: list[Piece] = []
        self._open: Run | None = None  # what follows the settled pieces: one piece, which may grow

    def add(self, runs: Iterable[Run]) -> None:
        for vaddr, length, offset in runs:
            if not length:
                continue
            if self._open is not None:
                ov, ol, oo = self._open
                if ov + ol == vaddr and oo + ol == offset:
                    self._open = (ov, ol + length, oo)
                    continue
                self.settled.extend(self._cut(self._open))
            self._open = (vaddr, length, offset)
        if self._open is not None:
            *done, last = self._cut(self._open)
            self.settled.extend(done)
            self._open = (self._open[0] + self._open[1] - last.length, last.length, last.offset)

    def settled_within(self, first: int, available: int) -> list[Piece]:
        """The settled pieces from index ``first`` on, as far as they lie in the first
        ``available`` bytes of the pages file (CRIU writes it while the follower cuts)."""
        end = first
        while end < len(self.settled) and self.settled[end].offset + self.settled[end].length <= available:
            end += 1
        return self.settled[first:end]

    def pieces(self) -> list[Piece]:
        """Every piece so far, the open last one included."""
        return self.settled + ([Piece(self._open[2], self._open[1])] if self._open else [])

    def _cut(self, run: Run) -> list[Piece]:
        vaddr, length, offset = run
        regions, end = self.regions, vaddr + length
        pieces = []
        while vaddr < end:
            i = bisect.bisect_right(self._starts, vaddr) - 1
            if i >= 0 and vaddr < regions[i][1]:
                anchor, limit = regions[i]
            else:
                anchor = 0
                limit = regions[i + 1][0] if i + 1 < len(regions) else end
            line = anchor + ((vaddr - anchor) // self.grid + 1) * self.grid
            step = min(end, limit, line) - vaddr
            pieces.append(Piece(offset, step))
            vaddr += step
            offset += step
        return pieces


def cut_runs(runs: Iterable[Run], regions: Sequence[Region] = (), grid: int = GRID) -> list[Piece]:
    """Pieces for a whole page map's runs (see ``GrowingCut``)."""
    cut = GrowingCut(regions, grid)
    cut.add(runs)
    return cut.pieces()


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
