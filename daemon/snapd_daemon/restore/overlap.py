"""Whether a restore fills its memory after the resume (post-copy, postcopy.py), and its figures.

``restore_overlap``: "gpu" (the default) uses post-copy for snapshots with GPU state,
whose CUDA restore then overlaps the fill; "always" for every snapshot; "never"
keeps the stopped-tree injection. Either way a host whose CRIU reports no
uffd-noncoop (userfaultfd fork/remap/unmap/remove events) injects into the
stopped tree, and so does a plan with a region that came to a child from its
parent at restore (the child holds the parent's pages there, and a userfaultfd
fills only missing pages).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import structlog

from snapd_daemon import metrics
from snapd_daemon.criu.binary import Criu
from snapd_daemon.errors import Cancelled, SnapdError
from snapd_daemon.restore.delivery import Route
from snapd_daemon.restore.postcopy import PostCopy
from snapd_daemon.snapshots.manifest import Manifest

log = structlog.get_logger()


def choose(mode: str, criu: Criu, manifest: Manifest, memory: list[Route], undo: ExitStack) -> PostCopy | None:
    """A ``PostCopy`` for restoring ``manifest`` whose cut-out memory is ``memory``, or None;
    ``undo`` (the restore's, which kills the tree) closes its uffds after the kill."""
    if not memory or mode == "never" or (mode == "gpu" and not manifest.gpu):
        return None
    if any(t.zero_fill for route in memory for t in route.targets):
        log.info("restore.postcopy_unused", reason="a region came to a child from its parent")
        return None
    if not criu.has_feature("uffd-noncoop"):
        log.info("restore.postcopy_unused", reason="CRIU reports no uffd-noncoop on this kernel")
        return None
    post = PostCopy(manifest.id)
    undo.callback(post.close)  # registered before the kill: run after it (last in, first out)
    return post


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
        post.gpu_seconds = time.monotonic() - began
        post.overlap_seconds = post.overlap(began, began + post.gpu_seconds)


def settle(post: PostCopy, report: Callable[[str], None]) -> None:
    """Wait for ``post`` to end (raising its failure), then log its figures in one line and
    ``report`` them (the restore's progress: the bench reads them there)."""
    try:
        with metrics.phase("restore", "fill"):
            post.wait()
    finally:
        figures = post.summary()
        log.info("restore.postcopy", **figures)
    report("post-copy " + " ".join(f"{k}={v}" for k, v in figures.items()))
