"""Push: a local snapshot into the remote tier, chunks the bucket lacks first, its manifest last.

Under a shared push lock in the bucket (store/remote.py: no remote gc runs
meanwhile) and the local store lock held shared (no local gc or rm takes a
chunk being read). Each chunk is checked with HEAD (by its name under this
host's write key, store/envelope.py) and, when the bucket lacks it, read
verified from the local store, sealed and uploaded with If-None-Match, in
parallel; a chunk another host uploaded meanwhile is kept as it is. The
manifest goes up last (sealed, and signed when a signing key is configured:
snapshots/signing.py) and only if absent, so hosts pushing one snapshot at
once publish it once, and no reader ever sees a manifest whose chunks are
not all there. A cancel before the manifest leaves chunks only, which the
next push reuses or a remote gc reclaims.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import structlog

from snapd_daemon import metrics
from snapd_daemon.remote.listing import require_remote
from snapd_daemon.runtime import Runtime
from snapd_daemon.runtime.cancel import CancelToken
from snapd_daemon.runtime.progress import Phase, ProgressEvent, Reporter
from snapd_daemon.runtime.registry import new_operation_id
from snapd_daemon.snapshots.catalog import chunk_corrupt
from snapd_daemon.snapshots.manifest import Manifest
from snapd_daemon.store.model import ZERO_CHUNK, ChunkUnreadable

log = structlog.get_logger()


@dataclass(frozen=True)
class PushOutcome:
    snapshot_id: str
    chunks: int
    uploaded_chunks: int
    uploaded_bytes: int
    already_there: bool
    seconds: float


def push(rt: Runtime, ref: str, operation_id: str, report: Reporter, cancel: CancelToken) -> PushOutcome:
    """Upload the local snapshot ``ref`` names (see the module docstring)."""
    remote = require_remote(rt)
    started = time.monotonic()
    m = rt.catalog.get(ref)
    with rt.registry.claim("push", operation_id), remote.lock("push") as lock:
        if remote.has_manifest(m.id):
            log.info("remote.push_skipped", snapshot=m.id, reason="the bucket has it")
            return PushOutcome(m.id, len(m.chunk_ids()), 0, 0, True, round(time.monotonic() - started, 3))
        with rt.store.lock.shared():
            rt.catalog.get(m.id)  # an rm that won the store lock meanwhile makes this NOT_FOUND
            uploaded, sent = _upload_chunks(rt, m, report, cancel)
        cancel.commit()
        lock.check_fresh()
        remote.put_manifest(m.id, m.to_json(rt.settings.fleet_keys.signer()).encode())
    outcome = PushOutcome(m.id, len(m.chunk_ids()), uploaded, sent, False, round(time.monotonic() - started, 3))
    log.info("remote.pushed", snapshot=m.id, chunks=outcome.chunks, uploaded_chunks=uploaded, uploaded_bytes=sent,
             seconds=outcome.seconds)
    return outcome


def _upload_chunks(rt: Runtime, m: Manifest, report: Reporter, cancel: CancelToken) -> tuple[int, int]:
    """Upload the chunks of ``m`` the bucket lacks; (chunks, bytes) uploaded."""
    assert rt.remote is not None
    remote = rt.remote
    lengths = {ref.id: ref.length for f in m.files for ref in f.chunks if ref.id != ZERO_CHUNK}
    total = sum(lengths.values())
    lock = threading.Lock()
    tally = {"done": 0, "chunks": 0, "bytes": 0}
    report(ProgressEvent(Phase.UPLOAD, 0, total, f"{len(lengths)} chunk(s) to {remote.cfg.where}"))

    def one(cid: str) -> None:
        cancel.check()
        sent = 0
        if not remote.has_chunk(cid):
            try:
                blob = rt.store.read_stored(cid)
            except ChunkUnreadable as err:
                raise chunk_corrupt(m, err) from err
            if remote.put_chunk(cid, blob):
                sent = len(blob)
        with lock:
            tally["done"] += lengths[cid]
            tally["chunks"] += bool(sent)
            tally["bytes"] += sent
            done = tally["done"]
        metrics.REMOTE_BYTES.labels("up").inc(sent)
        report(ProgressEvent(Phase.UPLOAD, done, total))

    with ThreadPoolExecutor(remote.cfg.threads, thread_name_prefix="push") as pool:
        jobs = [pool.submit(one, cid) for cid in lengths]
        try:
            for job in jobs:
                job.result()
        finally:
            for job in jobs:
                job.cancel()
    return tally["chunks"], tally["bytes"]


def background_push(rt: Runtime, snapshot_id: str) -> str:
    """Push a snapshot on a thread of its own (after a checkpoint); its operation id. The
    outcome is logged under that id; `snapd list --remote` shows the snapshot once pushed."""
    op = new_operation_id()
    token = CancelToken(op, "the snapshot stays local; chunks already uploaded are reused by the next push")

    def run() -> None:
        structlog.contextvars.bind_contextvars(op=op, kind="push")
        try:
            with rt.registry.cancellable(token, "push"):
                push(rt, snapshot_id, op, lambda _event: None, token)
        except Exception as exc:
            log.error("remote.background_push_failed", snapshot=snapshot_id, error=str(exc),
                      error_class=type(exc).__name__)

    threading.Thread(target=run, name=f"push-{op}").start()
    return op
