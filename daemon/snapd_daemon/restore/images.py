"""Restore faster than stock CRIU: hand CRIU a trimmed image, fill big regions ourselves.

Stock `criu restore` copies every page through one serial read loop. Here the
large private anonymous regions of each process (the driver's host copy of
VRAM, model weights, a KV cache) are cut out of the image CRIU sees: their
pagemap entries and page bytes are removed, so CRIU maps them as fresh, zeroed
anonymous memory. Once CRIU has restored the tree (every task left stopped,
none has run) snapd writes their bytes straight from the store into the processes with
process_vm_writev, in parallel, one chunk decode per 2 MiB; all-zero chunks are
not written at all. Everything else (small regions, file-backed pages, all
other images) goes to CRIU as usual. Which bytes go which way is criu/trim.py's
cut: made at checkpoint and stored with the snapshot (trimmed images and
layout, used when the threshold matches), else made here from the images.
"""

from __future__ import annotations

import bisect
import os
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from snapd_daemon.criu.images import (
    FILES_NAME,
    PageRun,
    adjust_files,
    advise_hugepages,
    pages_images,
    read_vmas,
    write_pagemap,
)
from snapd_daemon.criu.trim import TRIMMED, InjectSpan, TrimmedLayout, cut, regions_of, zero_fills
from snapd_daemon.errors import ManifestDamaged
from snapd_daemon.restore.delivery import ChunkIndex, Delivery, Progress, Route, Router
from snapd_daemon.snapshots.manifest import ImageEntry, Manifest

log = structlog.get_logger()
# where a stored cut's restore puts the original page maps its trimmed ones replace (checked, never given to CRIU)
ORIGINALS = ".original"


@dataclass
class FastRestore:
    """The trimmed image written for CRIU, and the memory writes left for after CRIU."""

    memory: list[Route]
    injected_bytes: int
    kept_bytes: int


def prepare(delivery: Delivery, manifest: Manifest, dest: Path, min_region: int, progress: Progress,
            huge_pages: bool = False) -> FastRestore:
    """Write the snapshot's images into ``dest`` with the big regions cut out, without
    the recorded sizes of files open write-only (outputs grow), and with O_APPEND
    on the tree's outward stdout/stderr pipes (they will write to a restore log).

    Returns the memory writes to make (``Delivery.run``) once CRIU has restored
    the tree, before any task of it runs.
    """
    began = time.monotonic()
    entries = {e.name: e for e in manifest.files}
    stored = manifest.trimmed
    unfit = stored.fits(min_region, set(entries), {manifest.image_pid(p) for p in manifest.pids}) if stored else ""
    if stored and unfit:
        log.info("restore.stored_cut_unused", reason=unfit)
        stored = None
    router = Router()
    fds: list[int] = []
    try:
        if stored is not None:
            layout, kept = stored, _write_stored(delivery, router, entries, dest, fds, progress)
            _check_cut(stored, manifest, dest)
            _check_addresses(stored, manifest, dest / ORIGINALS)
            _check_sharing(stored, manifest, dest)
            _adjust_files(dest, manifest)
        else:
            layout, kept = _write_cut(delivery, router, entries, manifest, dest, min_region, fds, progress)
    finally:
        for fd in fds:
            os.close(fd)
    if huge_pages:
        for pid, spans in layout.regions.items():
            advise_hugepages(dest / f"mm-{pid}.img", spans)
    memory = Router()
    indexes: dict[str, ChunkIndex] = {}
    for span in layout.inject:
        index = indexes.get(span.pages_file) or indexes.setdefault(span.pages_file, ChunkIndex(entries[span.pages_file]))
        memory.add(index, span.offset, span.length, pid=span.pid, dest=span.vaddr, zero_fill=span.zero_fill)
    log.info("restore.prepare_steps", cut="stored" if stored else "made here", kept_bytes=kept,
             inject_spans=len(layout.inject), seconds=round(time.monotonic() - began, 3))
    return FastRestore(memory=memory.take(), injected_bytes=sum(s.length for s in layout.inject), kept_bytes=kept)


def _write_stored(delivery: Delivery, router: Router, entries: dict[str, ImageEntry], dest: Path, fds: list[int],
                  progress: Progress) -> int:
    """Every image, the trimmed copies in place of the originals, in one pass (the original
    page maps of those into ``ORIGINALS``, for ``_check_addresses``); the bytes of the pages
    files written for CRIU."""
    replaced = {name.removeprefix(TRIMMED) for name in entries if name.startswith(TRIMMED)}
    (dest / ORIGINALS).mkdir()
    for name, entry in entries.items():
        if name not in replaced:
            _route_whole(router, entry, dest / name.removeprefix(TRIMMED), fds)
        elif name.startswith("pagemap-"):
            _route_whole(router, entry, dest / ORIGINALS / name, fds)
    delivery.run(router.take(), progress)
    return sum((dest / name).stat().st_size for name in replaced if name.startswith("pages-"))


def _check_cut(layout: TrimmedLayout, manifest: Manifest, dest: Path) -> None:
    """ManifestDamaged, before anything is restored, when the stored cut's spans do not fit
    the trimmed page maps just written (a manifest sealed anew after an edit)."""
    problem = layout.misplaced({img.pages_file: [r.length for r in img.runs] for img in pages_images(dest)})
    if problem:
        raise ManifestDamaged(where=f"of snapshot {manifest.id}", snapshot_id=manifest.id,
                              problem=f"its restore cut does not fit its trimmed page maps: {problem}",
                              action="nothing was restored and no chunk was touched")


def _check_addresses(layout: TrimmedLayout, manifest: Manifest, originals: Path) -> None:
    """ManifestDamaged, before anything is restored, when an injected span's address is not
    where the snapshot's original page map (its own image, written verified into
    ``originals`` by ``_write_stored``) puts the span's bytes: a cut sealed anew after an
    edit of an address would otherwise write the right bytes at the wrong place, inside a
    region large enough to take them."""
    maps = {(img.pid, img.pages_file): img.runs for img in pages_images(originals)}
    starts = {key: [run.offset for run in runs] for key, runs in maps.items()}
    for s in layout.inject:
        runs = maps.get((s.pid, s.pages_file))
        if runs is None:
            problem = f"its restore cut names {s.pages_file} of pid {s.pid}, which has no page map in the snapshot"
        elif _misplaced(s, runs, starts[(s.pid, s.pages_file)]):
            problem = (f"its restore cut puts {s.length} bytes of {s.pages_file} at offset {s.offset} at "
                       f"{s.vaddr:#x} in pid {s.pid}, where its page map does not")
        else:
            continue
        raise ManifestDamaged(where=f"of snapshot {manifest.id}", snapshot_id=manifest.id, problem=problem,
                              action="nothing was restored and no chunk was touched")


def _check_sharing(layout: TrimmedLayout, manifest: Manifest, dest: Path) -> None:
    """ManifestDamaged, before anything is restored, when the stored cut's regions, or a span's
    ``zero_fill``, are not what the snapshot's own mappings (its mm images, written verified
    into ``dest``) make them: a span of a region a child got from its parent must have its
    zero chunks written, or a child whose copy CRIU restores as inherited keeps its parent's
    bytes where the snapshot has zeros."""
    vmas = {img.pid: read_vmas(dest / f"mm-{img.pid}.img") for img in pages_images(dest)}
    regions = regions_of(vmas, layout.min_region)
    zero_fill = zero_fills(regions)
    problem = "" if regions == layout.regions else "its restore cut's regions are not the snapshot's mappings"
    for s in layout.inject if not problem else ():
        if zero_fill(s.pid, s.vaddr) != s.zero_fill:  # None: in no region of its process
            problem = (f"its restore cut says the span at {s.vaddr:#x} in pid {s.pid} is{'' if s.zero_fill else ' not'} "
                       "in a region shared with another process, and the snapshot's mappings say otherwise")
            break
    if problem:
        raise ManifestDamaged(where=f"of snapshot {manifest.id}", snapshot_id=manifest.id, problem=problem,
                              action="nothing was restored and no chunk was touched")


def _misplaced(span: InjectSpan, runs: tuple[PageRun, ...], starts: list[int]) -> bool:
    """Whether some byte of ``span`` is not in ``runs`` (a page map's, in file order, their
    offsets ``starts``) or not at the address the run holding it gives."""
    end = span.offset + span.length
    covered = 0
    k = max(bisect.bisect_right(starts, span.offset) - 1, 0)
    while k < len(runs) and runs[k].offset < end:
        run = runs[k]
        low, high = max(span.offset, run.offset), min(end, run.offset + run.length)
        if low < high:
            if run.vaddr + (low - run.offset) != span.vaddr + (low - span.offset):
                return True
            covered += high - low
        k += 1
    return covered != span.length


def _write_cut(delivery: Delivery, router: Router, entries: dict[str, ImageEntry], manifest: Manifest, dest: Path,
               min_region: int, fds: list[int], progress: Progress) -> tuple[TrimmedLayout, int]:
    """Every image but the pages images, then the pages images cut here (criu/trim.py)
    from the page maps and mm images just written; the cut and the bytes kept for CRIU."""
    for name, entry in entries.items():
        if not name.startswith(("pages-", TRIMMED)):
            _route_whole(router, entry, dest / name, fds)
    delivery.run(router.take(), lambda _done: None)
    _adjust_files(dest, manifest)
    images = pages_images(dest)
    cuts, regions = cut(images, {img.pid: read_vmas(dest / f"mm-{img.pid}.img") for img in images}, min_region)
    kept = 0
    for c in cuts:
        index = ChunkIndex(entries[c.image.pages_file])
        fd = _create(dest / c.image.pages_file, sum(s.length for s in c.keep), fds)
        out = 0
        for span in c.keep:
            router.add(index, span.offset, span.length, fd=fd, dest=out)
            out += span.length
        write_pagemap(dest / f"pagemap-{c.image.pid}.img", c.image.pages_id, [(s.vaddr, s.length) for s in c.keep])
        kept += out
    planned = {c.image.pages_file for c in cuts}
    for name, entry in entries.items():
        if name.startswith("pages-") and name not in planned:
            _route_whole(router, entry, dest / name, fds)
    delivery.run(router.take(), progress)
    return TrimmedLayout(min_region, regions, [s for c in cuts for s in c.inject]), kept


def _adjust_files(dest: Path, manifest: Manifest) -> None:
    if (dest / FILES_NAME).exists():
        appended = {end.inode for end in manifest.outward_stdio if end.writes and end.kind == "pipe"}
        outputs = adjust_files(dest / FILES_NAME, appended)
        if outputs:
            log.info("restore.output_files_unpinned", files=outputs)


def _route_whole(router: Router, entry: ImageEntry, path: Path, fds: list[int]) -> None:
    router.add(ChunkIndex(entry), 0, entry.size_bytes, fd=_create(path, entry.size_bytes, fds))


def _create(path: Path, size: int, fds: list[int]) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    fds.append(fd)
    os.ftruncate(fd, size)
    return fd
