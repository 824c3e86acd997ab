"""Remote gc: remove the chunks no snapshot in the bucket references, safely while other hosts push.

Method: an exclusive lock, as restic's prune takes (store/remote.py RemoteLock).
gc writes its lock, then lists the locks; if any other fresh lock exists (a
push, another gc) it removes its own and fails with RemoteBusy. Pushes do the
same in reverse: write a push lock, then list; a fresh gc lock sends them back
(they retry with backoff for a while). Because each side writes before it
reads, of two that start together at least one sees the other. While gc holds
its lock no push is between "the bucket has this chunk" and "my manifest is
up", which is the window in which deleting an unreferenced chunk would break a
snapshot. Plan-then-execute by age (mark now, sweep after a grace period) was
the other choice; it needs every push to finish within the grace period and
pushes of many GB have no such bound, while a lock states the exclusion
directly and its staleness (10 min without a refresh) bounds what a dead host
holds up. Every manifest must open and parse: gc removes nothing while one cannot
be read (sealed with a key this host lacks included), since the chunks it names
(by names under its key) would look unreferenced.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from snapd_daemon.remote.listing import remote_snapshots, require_remote
from snapd_daemon.runtime import Runtime

log = structlog.get_logger()


@dataclass(frozen=True)
class RemoteGcReport:
    snapshots: int
    chunks: int
    bytes: int
    stale_locks: int
    dry_run: bool


def collect_garbage(rt: Runtime, dry_run: bool) -> RemoteGcReport:
    """Plan under the gc lock, then (unless ``dry_run``) remove the unreferenced chunks and the
    locks of dead hosts."""
    remote = require_remote(rt)
    with remote.lock("gc") as lock:
        snapshots = remote_snapshots(remote, strict=True)
        live = {name for s in snapshots for name in s.chunk_names(remote)}
        garbage = [(name, size) for name, size, _ in remote.chunks() if name not in live]
        stale = lock.stale_locks()
        if not dry_run:
            remote.delete_chunks([name for name, _ in garbage])
            remote.bucket.delete(stale)
    report = RemoteGcReport(len(snapshots), len(garbage), sum(size for _, size in garbage), len(stale), dry_run)
    log.info("remote.gc", snapshots=report.snapshots, chunks=report.chunks, bytes=report.bytes,
             stale_locks=report.stale_locks, dry_run=dry_run)
    return report
