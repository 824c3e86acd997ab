"""Pull: a remote snapshot into the local store, chunks it lacks fetched in parallel, verified.

The chunks are staged under temporary names (store/imports.py) and published
with the manifest only once every one arrived and matched its hash, so the
local store shows the whole snapshot or none of it: a pull that fails (the
bucket unreachable, an object corrupt, truncated, vanished or failing
decryption, a cancel) removes what it staged and leaves the store as it was; a
full local store is PullSpaceFull.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog

from snapd_daemon.errors import PullSpaceFull, SnapshotNotFound, StoreFull
from snapd_daemon.remote.fetch import Fetcher
from snapd_daemon.remote.listing import RemoteSnapshot, find, require_remote
from snapd_daemon.runtime import Runtime
from snapd_daemon.runtime.cancel import CancelToken
from snapd_daemon.runtime.progress import Phase, ProgressEvent, Reporter
from snapd_daemon.snapshots.manifest import Manifest
from snapd_daemon.store.model import ZERO_CHUNK
from snapd_daemon.store.remote import RemoteStore

log = structlog.get_logger()


@dataclass(frozen=True)
class PullOutcome:
    snapshot_id: str
    chunks: int
    fetched_chunks: int
    fetched_bytes: int
    already_there: bool
    seconds: float


def fetch_order(m: Manifest) -> list[tuple[str, int]]:
    """(chunk, raw length) in the order a restore reads them: CRIU's small images first, then
    the pages files, each front to back."""
    files = sorted(m.files, key=lambda f: f.name.startswith("pages-"))
    return [(ref.id, ref.length) for f in files for ref in f.chunks if ref.id != ZERO_CHUNK]


def _local(rt: Runtime, ref: str) -> Manifest | None:
    try:
        return rt.catalog.get(ref)
    except SnapshotNotFound:
        return None


def pull(rt: Runtime, ref: str, operation_id: str, report: Reporter, cancel: CancelToken) -> PullOutcome:
    """Fetch the remote snapshot ``ref`` names (by id, else the newest of that name in the
    bucket) unless the local store has that id already."""
    remote = require_remote(rt)
    started = time.monotonic()
    found = _local(rt, ref)
    if found is not None and found.id == ref:
        return PullOutcome(found.id, len(found.chunk_ids()), 0, 0, True, round(time.monotonic() - started, 3))
    snap = find(remote, ref, rt.settings.fleet_keys)
    try:
        return _fetch(rt, remote, snap, operation_id, report, cancel, started)
    except StoreFull as full:
        raise full.recast(PullSpaceFull, snapshot_id=snap.manifest.id) from full


def _fetch(rt: Runtime, remote: RemoteStore, snap: RemoteSnapshot, operation_id: str, report: Reporter,
           cancel: CancelToken, started: float) -> PullOutcome:
    m = snap.manifest
    with rt.registry.claim("pull", operation_id, snapshot_id=m.id):
        if getattr(_local(rt, m.id), "id", None) == m.id:
            return PullOutcome(m.id, len(m.chunk_ids()), 0, 0, True, round(time.monotonic() - started, 3))
        # the lock only for the commit (which checks the local chunks reused are still there): a
        # gc during a long download would otherwise hold up every checkpoint and restore
        with rt.store.begin_import() as imported:
            fetcher = Fetcher(remote, imported, fetch_order(m), f"snapshot {m.id}", snap.key_id, cancel.check)
            report(ProgressEvent(Phase.DOWNLOAD, 0, fetcher.raw_total,
                                 f"{fetcher.chunks} of {len(m.chunk_ids())} chunk(s) from {remote.cfg.where}"))
            with fetcher, fetcher.progress(lambda done, total: report(ProgressEvent(Phase.DOWNLOAD, done, total))):
                fetcher.join()
            cancel.commit()
            rt.catalog.adopt(imported, m)
    outcome = PullOutcome(m.id, len(m.chunk_ids()), fetcher.fetched_chunks, fetcher.fetched_bytes, False,
                          round(time.monotonic() - started, 3))
    log.info("remote.pulled", snapshot=m.id, chunks=outcome.chunks, fetched_chunks=outcome.fetched_chunks,
             fetched_bytes=outcome.fetched_bytes, seconds=outcome.seconds)
    return outcome
