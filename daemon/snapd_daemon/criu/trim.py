"""The fast restore's cut of a dump: page runs kept for CRIU, page runs snapd injects.

A fast restore hands CRIU each pages image without the large private anonymous
regions of its process, then writes their bytes into the restored process
itself (restore/images.py). ``cut`` decides which bytes go which way, from the
page maps and the mappings (mm images). A region is injected only if it is
private, anonymous, writable and at least ``min_region`` bytes.

The cut is made once, by the checkpoint, which has the images at hand: it
stores ``write_trimmed``'s result with the snapshot — a trimmed copy of each
pages image (its kept bytes only) and of its page map, and the
``TrimmedLayout`` (the spans to inject, the regions they fill, the threshold
and the rules, ``CUT_VERSION``, it was made by). A restore with that threshold
and these rules then parses no image and decodes no small chunk to build
CRIU's pages files: it writes the trimmed files in place of the originals and
routes the stored spans. The original images are always kept too (the
snapshot stays a complete CRIU dump; any other threshold cuts them anew).

Invariants: every byte of a pages image is in exactly one kept or injected
span; kept spans are in pages-file order and a trimmed pages file holds
exactly them, in that order, as its trimmed page map lists them; injected
spans of one image never overlap.
"""

from __future__ import annotations

import bisect
import errno
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snapd_daemon.criu.images import PagesImage, Vma, read_vmas, write_pagemap

# where a snapshot's trimmed images are named (``trimmed/pages-1.img``, ...)
TRIMMED = "trimmed/"
# which rules made a stored cut (``injectable``, ``cut``): a restore uses a stored cut only
# when it was made by these rules for its threshold; a change of the rules bumps this
CUT_VERSION = 1
_COPY_PIECE = 8 << 20
PROT_WRITE = 0x2
MAP_PRIVATE = 0x02
MAP_ANONYMOUS = 0x20
MAP_LOCKED = 0x2000
MAP_HUGETLB = 0x40000
VMA_AREA_REGULAR = 1 << 0
VMA_AREA_VSYSCALL = 1 << 2
VMA_AREA_VDSO = 1 << 3
VMA_ANON_PRIVATE = 1 << 9
VMA_AREA_VVAR = 1 << 12
Region = tuple[int, int]


def injectable(vma: Vma, min_region: int) -> bool:
    """A region snapd injects itself (``min_region`` 0: none)."""
    return (
        min_region > 0
        and vma.end - vma.start >= min_region
        and vma.prot & PROT_WRITE != 0
        and vma.flags & (MAP_PRIVATE | MAP_ANONYMOUS) == MAP_PRIVATE | MAP_ANONYMOUS
        and vma.status & (VMA_AREA_REGULAR | VMA_ANON_PRIVATE) == VMA_AREA_REGULAR | VMA_ANON_PRIVATE
    )


def lazily_registered(vma: Vma) -> bool:
    """CRIU's lazy pages register ``vma`` with the task's userfaultfd (vma_entry_can_be_lazy)."""
    return (vma.flags & (MAP_PRIVATE | MAP_ANONYMOUS) == MAP_PRIVATE | MAP_ANONYMOUS
            and not vma.flags & (MAP_LOCKED | MAP_HUGETLB)
            and not vma.status & (VMA_AREA_VDSO | VMA_AREA_VVAR | VMA_AREA_VSYSCALL))


@dataclass(frozen=True)
class Span:
    """``length`` bytes at ``offset`` of a pages image, belonging at ``vaddr``."""

    vaddr: int
    offset: int
    length: int


def split_runs(runs: list[tuple[int, int, int]], regions: list[Region]) -> tuple[list[Span], list[Span]]:
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


@dataclass(frozen=True)
class InjectSpan:
    """Bytes of ``pages_file`` that snapd writes into process ``pid`` at ``vaddr``;
    ``zero_fill``: its all-zero chunks are written too (the region came to a child
    from its parent, whose bytes it would otherwise see)."""

    pid: int
    pages_file: str
    vaddr: int
    offset: int
    length: int
    zero_fill: bool


@dataclass(frozen=True)
class ImageCut:
    """One process's pages image, cut: ``keep`` goes to CRIU, ``inject`` to snapd."""

    image: PagesImage
    keep: list[Span]
    inject: list[InjectSpan]


def _joined(spans: list[InjectSpan]) -> list[InjectSpan]:
    """Join spans contiguous both in memory and in the file (CRIU writes a region as
    many page-map entries, at most its page-pipe size each, 1 MiB seen here)."""
    joined: list[InjectSpan] = []
    for s in spans:
        last = joined[-1] if joined else None
        if (last is not None and last.zero_fill == s.zero_fill and last.vaddr + last.length == s.vaddr
                and last.offset + last.length == s.offset):
            joined[-1] = InjectSpan(s.pid, s.pages_file, last.vaddr, last.offset, last.length + s.length, s.zero_fill)
        else:
            joined.append(s)
    return joined


def regions_of(vmas: dict[int, list[Vma]], min_region: int) -> dict[int, list[Region]]:
    """Each process's injected regions (its injectable mappings), in address order."""
    return {pid: sorted((v.start, v.end) for v in found if injectable(v, min_region)) for pid, found in vmas.items()}


def zero_fills(regions: dict[int, list[Region]]) -> Callable[[int, int], bool | None]:
    """``zero_fill`` of a span of pid at an address: whether its region is in more than one
    process's list (it came to a child from its parent); None when no region of pid holds it."""
    shared = Counter(region for spans in regions.values() for region in spans)
    starts = {pid: [r[0] for r in spans] for pid, spans in regions.items()}

    def zero_fill(pid: int, vaddr: int) -> bool | None:
        k = bisect.bisect_right(starts.get(pid, []), vaddr) - 1
        return shared[regions[pid][k]] > 1 if k >= 0 and vaddr < regions[pid][k][1] else None

    return zero_fill


def cut(images: list[PagesImage], vmas: dict[int, list[Vma]], min_region: int) -> tuple[list[ImageCut],
                                                                                          dict[int, list[Region]]]:
    """Cut every pages image; also returns each process's injected regions."""
    regions = regions_of({img.pid: vmas[img.pid] for img in images}, min_region)
    zero_fill = zero_fills(regions)
    cuts = []
    for img in images:
        keep, inject = split_runs([(r.vaddr, r.length, r.offset) for r in img.runs], regions[img.pid])
        spans = [InjectSpan(img.pid, img.pages_file, s.vaddr, s.offset, s.length, bool(zero_fill(img.pid, s.vaddr)))
                 for s in inject]
        cuts.append(ImageCut(img, keep, _joined(spans)))
    return cuts, regions


@dataclass(frozen=True)
class TrimmedLayout:
    """What a restore needs beside the trimmed images, for threshold ``min_region``."""

    min_region: int
    regions: dict[int, list[Region]]
    inject: list[InjectSpan]
    version: int = CUT_VERSION

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrimmedLayout:
        return cls(
            min_region=int(data["min_region"]),
            regions={int(pid): [(int(a), int(b)) for a, b in spans] for pid, spans in data["regions"].items()},
            inject=[InjectSpan(**s) for s in data["inject"]],
            version=int(data.get("version", 0)),
        )

    def fits(self, min_region: int, files: set[str], pids: set[int]) -> str:
        """Why this cut cannot serve a restore with threshold ``min_region`` of a snapshot
        with image files ``files`` and processes ``pids`` (as its images name them); ""
        when it can."""
        if self.version != CUT_VERSION or self.min_region != min_region:
            return (f"made by cut rules {self.version} for regions of {self.min_region} bytes, "
                    f"not by rules {CUT_VERSION} for {min_region}")
        wrong = next((s for s in self.inject if s.pages_file not in files or s.pid not in pids), None)
        return f"a span names {wrong.pages_file} and pid {wrong.pid}, not of this snapshot" if wrong else ""


    def misplaced(self, kept: dict[str, list[int]]) -> str:
        """Why the injected spans cannot be where this cut says, given the lengths of the
        kept spans of each pages image in file order (its trimmed page map, ``kept``); ""
        when they fit. In file order an image is its kept and injected spans one after the
        other (write_trimmed), so the bytes between two injected spans are whole kept spans,
        in order: a span's offset moved, or a length changed, breaks that."""
        spans: dict[str, list[InjectSpan]] = {}
        for s in self.inject:
            spans.setdefault(s.pages_file, []).append(s)
        for name, mine in spans.items():
            lengths = iter(kept.get(name, []))
            at = 0
            for s in sorted(mine, key=lambda s: s.offset):
                while at < s.offset:
                    length = next(lengths, None)
                    if length is None:
                        return f"{name}: the span at offset {s.offset} lies beyond its kept spans"
                    at += length
                if at != s.offset:
                    return (f"{name}: the span at offset {s.offset} starts inside a kept span (the kept spans "
                            f"before it end at {at})")
                at += s.length
        return ""


@dataclass(frozen=True)
class Trimmed:
    """What ``write_trimmed`` wrote: the layout and the files' names."""

    layout: TrimmedLayout
    names: list[str]


def write_trimmed(images_dir: Path, images: list[PagesImage], min_region: int) -> Trimmed:
    """Write the trimmed pages images and page maps into ``images_dir/trimmed``. Names
    in the result are relative to ``images_dir``."""
    vmas = {img.pid: read_vmas(images_dir / f"mm-{img.pid}.img") for img in images}
    cuts, regions = cut(images, vmas, min_region)
    out = images_dir / TRIMMED
    out.mkdir()
    names = []
    for c in cuts:
        src = os.open(images_dir / c.image.pages_file, os.O_RDONLY)
        try:
            dst = os.open(out / c.image.pages_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                at = 0
                for offset, length in _file_runs(c.keep):
                    _copy(src, dst, offset, length, at)
                    at += length
            finally:
                os.close(dst)
        finally:
            os.close(src)
        pagemap = f"pagemap-{c.image.pid}.img"
        write_pagemap(out / pagemap, c.image.pages_id, [(s.vaddr, s.length) for s in c.keep])
        names += [TRIMMED + c.image.pages_file, TRIMMED + pagemap]
    return Trimmed(TrimmedLayout(min_region, regions, [s for c in cuts for s in c.inject]), names)


def _file_runs(spans: list[Span]) -> list[tuple[int, int]]:
    """(offset, length) of the pages file for ``spans`` (in file order), those that follow
    each other in the file joined: one copy each, not one per page-map entry."""
    runs: list[tuple[int, int]] = []
    for s in spans:
        if runs and sum(runs[-1]) == s.offset:
            runs[-1] = (runs[-1][0], runs[-1][1] + s.length)
        else:
            runs.append((s.offset, s.length))
    return runs


def _copy(src: int, dst: int, offset: int, length: int, at: int) -> None:
    """Copy ``length`` bytes of ``src`` at ``offset`` to ``dst`` at ``at``, inside the kernel
    (no bytes through Python: on an H200 host the cut of an 8B server, 80 MB copied in
    Python, took 0.5 s beside the ingest's threads)."""
    while length:
        try:
            done = os.copy_file_range(src, dst, length, offset, at)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS, errno.EPERM):
                raise
            done = os.pwrite(dst, os.pread(src, min(length, _COPY_PIECE), offset), at)
        if not done:
            raise OSError(f"pages image ends before offset {offset + length}")
        offset += done
        at += done
        length -= done
