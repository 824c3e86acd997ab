"""Where image files are cut into chunks.

Pages images are cut on a grid of *virtual addresses* (every ``GRID`` bytes of
address space) and at every run of pages: the same memory mapped at the same
address alignment in two processes (weights, a zeroed KV cache, the driver's
host copy of VRAM) then yields identical chunks, wherever it sits in the
pages file. Large anonymous mappings are placed on 2 MiB (THP) boundaries by
the kernel, hence a 2 MiB grid. This costs nothing to compute (no rolling
hash over the data), which content-defined chunking would at 15+ GB per dump.
Other images are small (metadata) and are cut at fixed offsets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from snapd_daemon.criu.images import pages_images

GRID = 2 << 20


@dataclass(frozen=True)
class Piece:
    offset: int
    length: int


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


def cut_runs(runs: list[tuple[int, int, int]], grid: int = GRID) -> list[Piece]:
    """Pieces for runs of (vaddr, length, file offset), cut where vaddr crosses the grid."""
    pieces = []
    for vaddr, length, offset in merge_runs(runs):
        end = vaddr + length
        while vaddr < end:
            step = min(end, (vaddr // grid + 1) * grid) - vaddr
            pieces.append(Piece(offset, step))
            vaddr += step
            offset += step
    return pieces


def settled_pieces(runs: list[tuple[int, int, int]], available: int, grid: int = GRID) -> list[Piece]:
    """The pieces ``cut_runs`` will produce for a pages file still being written,
    as far as they cannot change any more: ``runs`` are the runs known so far and
    ``available`` the bytes of the file written so far.

    More runs can only extend the last known run (when contiguous) or follow it,
    so its bytes past its last grid line stay open; everything before is final.
    """
    merged = merge_runs(runs)
    if not merged:
        return []
    vaddr, length, offset = merged[-1]
    last_line = (vaddr + length) // grid * grid
    bound = min(available, offset + max(0, last_line - vaddr))
    settled = []
    for piece in cut_runs(merged, grid):
        if piece.offset + piece.length > bound:
            break
        settled.append(piece)
    return settled


def cut_fixed(size: int, grid: int = GRID) -> list[Piece]:
    return [Piece(off, min(grid, size - off)) for off in range(0, size, grid)]


def plan(images_dir: Path) -> dict[str, list[Piece]]:
    """Pieces of every file in a CRIU image directory, keyed by file name.

    Every byte of every file is covered exactly once, in order.
    """
    pages = {
        img.pages_file: cut_runs([(r.vaddr, r.length, r.offset) for r in img.runs])
        for img in pages_images(images_dir)
    }
    result = {}
    for path in sorted(images_dir.iterdir()):
        size = path.stat().st_size
        pieces = pages.get(path.name)
        if pieces is None or sum(p.length for p in pieces) != size:
            pieces = cut_fixed(size)
        result[path.name] = pieces
    return result
