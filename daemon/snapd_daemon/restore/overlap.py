"""Whether a restore writes its memory through userfaultfds (postcopy.py), before or after the
resume, and its figures.

``restore_overlap``: "gpu" uses post-copy for snapshots with GPU state, whose CUDA
restore then overlaps the fill; "always" for every snapshot; "never" writes the memory
into the stopped tree (the default). ``inject_method`` says how the stopped tree is
written: "writev" (process_vm_writev, the default) or "uffd" (the same fill as
post-copy, UFFDIO_COPY, ended and its uffds closed before the resume: all or nothing
as "writev", and cheaper per byte). Either way a host whose CRIU reports no
uffd-noncoop (userfaultfd fork/remap/unmap/remove events) writes with process_vm_writev,
and so does a plan with a region that came to a child from its parent at restore (the
child holds the parent's pages there, and a userfaultfd fills only missing pages).
"""

from __future__ import annotations

import bisect
import contextlib
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import structlog

from snapd_daemon import metrics
from snapd_daemon.criu.binary import Criu
from snapd_daemon.criu.images import read_vmas
from snapd_daemon.criu.trim import lazily_registered
from snapd_daemon.errors import Cancelled, SnapdError
from snapd_daemon.restore.delivery import Route
from snapd_daemon.restore.postcopy import PostCopy
from snapd_daemon.runtime.progress import Phase, ProgressEvent, Reporter
from snapd_daemon.runtime.slowphase import SlowPhase
from snapd_daemon.snapshots.manifest import Manifest

log = structlog.get_logger()


def choose(mode: str, method: str, criu: Criu, manifest: Manifest, memory: list[Route], images: Path,
           undo: ExitStack) -> PostCopy | None:
    """A ``PostCopy`` for restoring ``manifest`` whose cut-out memory is ``memory`` (the images
    CRIU restores from in ``images``), overlapping the resume or not, or None (process_vm_writev);
    ``undo`` (the restore's, which kills the tree) closes its uffds after the kill."""
    overlaps = mode == "always" or (mode == "gpu" and bool(manifest.gpu))
    if not memory or not (overlaps or method == "uffd"):
        return None
    why = ""
    if any(t.zero_fill for route in memory for t in route.targets):
        why = "a region came to a child from its parent"
    elif not criu.has_feature("uffd-noncoop"):
        why = "CRIU reports no uffd-noncoop on this kernel"
    else:
        why = _unregistered(memory, images)
    if why:
        log.info("restore.postcopy_unused", reason=why)
        return None
    post = PostCopy(manifest.id, overlaps)
    undo.callback(post.close)  # registered before the kill: run after it (last in, first out)
    return post


def _unregistered(memory: list[Route], images: Path) -> str:
    """Where ``memory`` goes into a mapping CRIU's lazy pages leave without a userfaultfd
    (locked, hugetlb, vdso / vvar / vsyscall: CRIU's vma_entry_can_be_lazy), or ""; a fill
    there would be refused (ENOENT) while the process read zeros."""
    addresses: dict[int, list[int]] = {}
    for route in memory:
        for t in route.targets:
            if t.pid:
                addresses.setdefault(t.pid, []).append(t.dest_offset)
    for pid, wanted in addresses.items():
        wanted.sort()
        for vma in read_vmas(images / f"mm-{pid}.img"):
            k = bisect.bisect_left(wanted, vma.start)
            if k < len(wanted) and wanted[k] < vma.end and not lazily_registered(vma):
                return f"pid {pid}'s mapping at {vma.start:#x} is not registered by CRIU's lazy pages"
    return ""


@contextlib.contextmanager
def blamed(post: PostCopy | None) -> Iterator[None]:
    """Around CRIU's restore, while ``post``'s fill runs: a failure that the fill's failure
    caused (CRIU killed by its abort: a corrupt chunk, a cancel) is the fill's."""
    try:
        yield
    except SnapdError:
        if post is not None and post.failure is not None:
            raise post.failure from None
        raise


@contextlib.contextmanager
def during(post: PostCopy | None) -> Iterator[None]:
    """Around the CUDA restore: with ``post``, its fill reports no progress meanwhile (the two
    would interleave), the time it ran while the fill still ran is counted, and a failure
    of it that the fill's failure caused (the tree killed under it) is the fill's."""
    if post is None:
        yield
        return
    post.muted = True
    began = time.monotonic()
    try:
        yield
    except SnapdError:
        if post.failure is not None and not isinstance(post.failure, Cancelled):
            raise post.failure from None
        raise
    finally:
        post.figures.gpu_restore(began, time.monotonic())


def settle(post: PostCopy, report: Reporter, total: int, slow: SlowPhase) -> None:
    """Wait for ``post`` to end (raising its failure; ``slow`` watches the wait), then log its
    figures in one line and ``report`` them (the restore's last inject progress, of ``total``
    bytes: the bench reads them there)."""
    try:
        with metrics.phase("restore", "fill"), slow:
            post.wait()
    finally:
        figures = post.figures.summary()
        log.info("restore.postcopy", **figures)
    report(ProgressEvent(Phase.INJECT, total, total, "post-copy " + " ".join(f"{k}={v}" for k, v in figures.items())))
