"""The snapshots a store holds: its manifests parsed, found by id or name, and the
snapshot-level decisions over its chunks (delete, gc, fsck, prefetch).

Invariants: the index holds the manifests the store holds, parsed; a manifest
enters it while its ingest still holds the store lock (``publish``), so gc,
which computes what is live from the index under the exclusive lock, never
sees a committed snapshot's chunks as orphans. A manifest that fails its seal
or does not parse (seal.py) never enters it: ``load`` (and ``fsck``, which reads
every manifest file again) puts it in the store's quarantine and goes on; its
snapshot is then listed as damaged (``damaged_manifests``) and ``get`` names it
with ManifestDamaged; its chunks stay live. A snapshot is damaged while a chunk
it references is in quarantine and not stored anew (the store decides that;
``damaged_chunks``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from snapd_daemon.errors import (
    ChunkCorrupt,
    ManifestDamaged,
    PrefetchSpaceFull,
    SnapdError,
    SnapshotAmbiguous,
    SnapshotNotFound,
    SnapshotPinned,
    StoreFull,
)
from snapd_daemon.host import linkremap
from snapd_daemon.snapshots.manifest import Manifest
from snapd_daemon.snapshots.seal import Opened, open_manifest
from snapd_daemon.store.imports import ChunkImport
from snapd_daemon.store.ingest import Committed
from snapd_daemon.store.local import PrunePlan
from snapd_daemon.store.model import ZERO_CHUNK, ChunkLengthMismatch, ChunkUnreadable, chunk_offsets
from snapd_daemon.store.protocol import ChunkStore, IngestSession
from snapd_daemon.util.prefixes import AmbiguousPrefix, by_prefix

log = structlog.get_logger()
# raw bytes fsck verifies per hold of the store lock: the most a gc or delete waits for it
FSCK_BATCH_BYTES = 64 << 20


@dataclass
class GcReport:
    expired: list[str] = field(default_factory=list)
    chunks: int = 0
    bytes: int = 0
    dry_run: bool = True


@dataclass(frozen=True)
class Damage:
    snapshot_id: str
    file: str
    offset: int
    chunk: str
    problem: str


@dataclass(frozen=True)
class DamagedManifest:
    """A manifest in quarantine: the snapshot it was of, where it was, where it is, why."""

    snapshot_id: str
    path: str
    moved_to: str
    problem: str


@dataclass
class FsckReport:
    snapshots: int = 0
    chunks_checked: int = 0
    bytes_checked: int = 0
    damage: list[Damage] = field(default_factory=list)
    orphan_chunks: int = 0
    damaged_manifests: list[DamagedManifest] = field(default_factory=list)
    # snapshots deleted (rm, gc) while fsck ran: their chunks not checked from then on
    snapshots_gone: list[str] = field(default_factory=list)


def _batches(users: dict[str, list[tuple[Manifest, str, int, int]]], size: int) -> Iterator[list[str]]:
    """The chunk ids of ``users`` in lists of about ``size`` raw bytes (at least one chunk each)."""
    batch: list[str] = []
    total = 0
    for cid, places in users.items():
        batch.append(cid)
        total += places[0][3]
        if total >= size:
            yield batch
            batch, total = [], 0
    if batch:
        yield batch


def chunk_corrupt(manifest: Manifest, err: ChunkUnreadable, place: tuple[str, int] | None = None) -> SnapdError:
    """The snapshot-level error for a chunk of ``manifest`` that could not be read (at
    ``place``, (file, offset), when known): ChunkCorrupt, or ManifestDamaged for an intact
    chunk the manifest gives another length."""
    name, offset = place or manifest.locate(err.cid)
    if isinstance(err, ChunkLengthMismatch):
        return ManifestDamaged(where=f"of snapshot {manifest.id}", snapshot_id=manifest.id,
                               problem=f"it says chunk {err.cid} ({name} at offset {offset}) holds {err.expected} "
                               f"bytes; that chunk is intact and holds {err.actual}",
                               action="the chunk stays in the store, nothing was restored from the manifest")
    return ChunkCorrupt(snapshot_id=manifest.id, chunk=err.cid, file=name, offset=offset, problem=err.problem)


class Catalog:
    def __init__(self, store: ChunkStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._index: dict[str, Manifest] = {}

    def load(self) -> None:
        """Open every manifest the store holds (seal.py); one that fails goes to the quarantine,
        logged with its path and problem; one written before seals is sealed now (rewritten
        as read; a write that fails is logged and retried at the next start). Must run
        before the daemon accepts requests."""
        for path, data in self.store.manifests.all():
            opened = self._open(path, data)
            if opened is None:
                continue
            m = opened.manifest
            self._index[m.id] = m
            if not opened.seal:
                try:
                    self.store.manifests.put(m.id, m.to_json().encode())
                except OSError as exc:
                    log.warning("snapshot.manifest_not_sealed", path=str(path), error=str(exc))
                else:
                    log.info("snapshot.manifest_sealed", path=str(path))

    def _open(self, path: Path, data: bytes) -> Opened | None:
        """The manifest stored at ``path`` as ``data``; None when it failed (then quarantined)."""
        moved = self.store.quarantine.manifests_dir / path.name
        try:
            opened = open_manifest(data, str(path), path.stem, f"no chunk was touched; it goes to {moved}")
            m = opened.manifest
            if m.id != path.stem:
                raise ManifestDamaged(where=str(path), snapshot_id=path.stem,
                                      problem=f"it is the manifest of snapshot {m.id}, not of {path.stem}",
                                      action=f"no chunk was touched; it goes to {moved}")
        except ManifestDamaged as err:
            self.store.quarantine.put_manifest(path, err.fields["problem"])
            log.error("snapshot.manifest_quarantined", path=str(path), moved_to=str(moved), error=err.message)
            return None
        return opened

    def damaged_manifests(self) -> list[DamagedManifest]:
        """The quarantined manifests of snapshots not listed (not stored anew since), by id."""
        q = self.store.quarantine
        with self._lock:
            found = [(name, problem) for name, problem in q.manifests().items()
                     if name.removesuffix(".json") not in self._index]
        return [DamagedManifest(name.removesuffix(".json"), str(self.store.manifests.root / name),
                                str(q.manifests_dir / name), problem) for name, problem in sorted(found)]

    # -- finding --------------------------------------------------------------

    def list(self, name: str = "") -> list[Manifest]:
        """Complete snapshots, oldest first; only those named ``name`` if given."""
        with self._lock:
            found = [m for m in self._index.values() if not name or m.name == name]
        return sorted(found, key=lambda m: (m.created, m.id))

    def get(self, ref: str) -> Manifest:
        """A snapshot by id, else the newest snapshot named ``ref``, else the one snapshot whose
        id starts with ``ref`` (SnapshotAmbiguous, listing them, when several do)."""
        with self._lock:
            if ref in self._index:
                return self._index[ref]
        named = self.list(name=ref)
        if named:
            return named[-1]
        with self._lock:
            try:
                found = by_prefix(ref, list(self._index))
            except AmbiguousPrefix as many:
                raise SnapshotAmbiguous(ref=ref, count=many.count, candidates=many.candidates) from None
            if found is not None:
                return self._index[found]
        damaged = next((d for d in self.damaged_manifests() if d.snapshot_id == ref), None)
        if damaged is not None:
            raise ManifestDamaged(where=damaged.path, snapshot_id=damaged.snapshot_id, problem=damaged.problem,
                                  action=f"no chunk was touched; it is in quarantine at {damaged.moved_to}: pull or "
                                  "import an intact copy of the snapshot, or delete that file")
        raise SnapshotNotFound(snapshot=ref)

    def find(self, snapshot_id: str) -> Manifest | None:
        """The snapshot of exactly this id, if listed."""
        with self._lock:
            return self._index.get(snapshot_id)

    def index(self, manifest: Manifest) -> None:
        """List a snapshot whose manifest the store has just written (an import)."""
        with self._lock:
            self._index[manifest.id] = manifest

    def is_pinned(self, snapshot_id: str) -> bool:
        return snapshot_id in self.store.pins

    def is_hot(self, snapshot_id: str) -> bool:
        return self.store.is_hot(snapshot_id)

    def damaged_chunks(self, manifest: Manifest) -> list[str]:
        """The chunks of ``manifest`` in quarantine and not stored anew, sorted."""
        return sorted(self.store.damaged(manifest.chunk_ids()))

    def live_chunks(self, leaving: frozenset[str] = frozenset()) -> set[str]:
        """Chunks the snapshots reference (those in ``leaving`` left out), and every chunk a
        quarantined manifest names: an unreadable manifest never costs its snapshot's chunks."""
        with self._lock:
            live = {c for m in self._index.values() if m.id not in leaving for c in m.chunk_ids()}
        return live | self.store.quarantine.manifest_refs()

    # -- changing -------------------------------------------------------------

    def publish(self, ingest: IngestSession, manifest: Manifest) -> Manifest:
        """Commit ``ingest`` with ``manifest`` (its sizes filled in at commit) and list it."""

        def render(committed: Committed) -> bytes:
            manifest.stored_bytes = committed.stored_bytes
            manifest.new_bytes = committed.new_bytes
            return manifest.to_json().encode()

        ingest.commit(manifest.id, manifest.chunk_ids(), render)
        with self._lock:
            self._index[manifest.id] = manifest
        return manifest

    def adopt(self, imported: ChunkImport, manifest: Manifest) -> int:
        """Publish a snapshot that came whole from elsewhere (a pull, an import) and list it, its
        stored and new bytes counted for this store; bytes of chunks new to the store."""
        used = manifest.chunk_ids()
        manifest.stored_bytes = sum(imported.stored_size(cid) for cid in used)

        def render(added: set[str]) -> bytes:
            manifest.new_bytes = sum(imported.sizes[cid] for cid in added)
            return manifest.to_json().encode()

        imported.commit(manifest.id, used, render)
        with self._lock:
            self._index[manifest.id] = manifest
        return manifest.new_bytes

    def pin(self, manifest: Manifest, pinned: bool) -> None:
        self.store.pins.set(manifest.id, pinned)

    def delete(self, manifest: Manifest) -> int:
        """Remove a snapshot and the chunks only it used; returns the bytes freed."""
        if self.is_pinned(manifest.id):
            raise SnapshotPinned(snapshot_id=manifest.id)
        with self.store.lock.exclusive():
            if self.find(manifest.id) is None:  # a gc expired it while this waited for the lock
                raise SnapshotNotFound(snapshot=manifest.id)
            self._unpublish(manifest.id)
            return self.store.prune(PrunePlan([(cid, 0) for cid in manifest.chunk_ids() - self.live_chunks()]))

    def gc(self, keep_last: int, dry_run: bool,
           busy: Callable[[], frozenset[str]] = frozenset) -> GcReport:
        """Plan, then (unless ``dry_run``) execute: expire snapshots beyond the newest
        ``keep_last`` of each name (0: keep all; pinned, unnamed and ``busy()`` ones —
        those an operation is using, asked once the lock is held — are kept), then
        remove every chunk no remaining snapshot references."""
        with self.store.lock.exclusive():
            report = GcReport(dry_run=dry_run)
            in_use = busy()
            if keep_last:
                by_name: dict[str, list[Manifest]] = {}
                for m in self.list():
                    if m.name:
                        by_name.setdefault(m.name, []).append(m)
                report.expired = [m.id for ms in by_name.values() for m in ms[:-keep_last]
                                  if not self.is_pinned(m.id) and m.id not in in_use]
            plan = self.store.plan_prune(self.live_chunks(frozenset(report.expired)))
            report.chunks, report.bytes = len(plan.chunks), plan.bytes
            if not dry_run:
                for sid in report.expired:
                    self._unpublish(sid)
                self.store.prune(plan)
            return report

    def _unpublish(self, snapshot_id: str) -> None:
        """Forget a snapshot: its prefetched copy, its manifest, the links that kept its unlinked
        open files (host/linkremap.py). Caller holds the lock exclusive."""
        self.store.drop_prefetch(snapshot_id)
        self.store.manifests.remove(snapshot_id)
        with self._lock:
            gone = self._index.pop(snapshot_id)
        linkremap.remove(gone.link_remap_files)

    # -- reading --------------------------------------------------------------

    def fsck(self, manifests: list[Manifest], everything: bool = False) -> FsckReport:
        """Read the given snapshots' manifest files again and check their seals (one that fails
        goes to the quarantine and its snapshot off the list; ``everything``: the report lists
        every quarantined manifest, not only those this run found), then read and verify every
        chunk the others reference, on disk (not the hot tier); the store quarantines each bad
        one, so the snapshots using it show as damaged.

        Consistent with gc and delete, which may run meanwhile: the chunks are checked in
        batches of about ``FSCK_BATCH_BYTES``, each under the store lock held shared, and
        a batch checks only chunks of snapshots still listed then. Under that lock every
        listed snapshot's chunks are stored (gc and delete unlist a snapshot before they
        remove its chunks, both under the lock held exclusive), so a chunk found missing or
        corrupt is real damage; a snapshot deleted while fsck ran is counted in
        ``snapshots_gone``, never reported. A gc or delete waits for one batch at most."""
        report = FsckReport(snapshots=len(manifests))
        found = [m.id for m in manifests if not self._still_sealed(m)]
        manifests = [m for m in manifests if m.id not in found]
        report.damaged_manifests = [d for d in self.damaged_manifests() if everything or d.snapshot_id in found]
        users: dict[str, list[tuple[Manifest, str, int, int]]] = {}
        for m in manifests:
            for entry in m.files:
                for offset, ref in chunk_offsets(entry.chunks):
                    if ref.id != ZERO_CHUNK:
                        users.setdefault(ref.id, []).append((m, entry.name, offset, ref.length))
        gone: set[str] = set()
        for batch in _batches(users, FSCK_BATCH_BYTES):
            with self.store.lock.shared():
                with self._lock:
                    gone |= {m.id for m in manifests if m.id not in self._index}
                listed = {cid: [u for u in users[cid] if u[0].id not in gone] for cid in batch}
                listed = {cid: places for cid, places in listed.items() if places}
                problems = self.store.check(list(listed))
            report.chunks_checked += len(listed)
            report.bytes_checked += sum(places[0][3] for places in listed.values())
            for cid, problem in problems.items():
                report.damage += [Damage(m.id, name, off, cid, problem) for m, name, off, _ in listed[cid]]
        report.snapshots_gone = sorted(gone)
        # a count only: live is taken first, and chunks only leave, so a chunk counted is one no
        # snapshot named then (or one an ingest under way has written before its manifest)
        report.orphan_chunks = self.store.orphans(self.live_chunks())
        return report

    def _still_sealed(self, m: Manifest) -> bool:
        """Whether ``m``'s manifest file still opens (a file gone, by an rm or gc meanwhile,
        counts as opening); if not, it is quarantined and the snapshot unlisted."""
        path = self.store.manifests.path(m.id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return True
        if self._open(path, data) is not None:
            return True
        with self._lock:
            self._index.pop(m.id, None)
        return False

    def prefetch(self, manifest: Manifest, progress: Callable[[int], None]) -> int:
        """Keep the snapshot's chunks decompressed in RAM; bytes added."""
        chunks = {ref.id: ref.length for entry in manifest.files for ref in entry.chunks if ref.id != ZERO_CHUNK}
        try:
            return self.store.prefetch(manifest.id, chunks, progress)
        except StoreFull as full:
            raise full.recast(PrefetchSpaceFull, snapshot_id=manifest.id) from full
        except ChunkUnreadable as err:
            raise chunk_corrupt(manifest, err) from err

    def drop_prefetch(self, manifest: Manifest) -> int:
        return self.store.drop_prefetch(manifest.id)
