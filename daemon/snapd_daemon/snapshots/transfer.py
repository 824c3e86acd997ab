"""Export and import of one snapshot as a stream (format: store/bundle.py).

Export sends the manifest (sealed, and signed when a signing key is configured:
signing.py) and every chunk it references, each read as stored and checked
against its hash first (a bad chunk is quarantined and the export fails with
ChunkCorrupt, naming it). Import opens the manifest as every reader does
(seal.py: ManifestDamaged), validates its name and labels as the API validates
a checkpoint's (naming.py: ImportInvalid naming the field) and checks its
signature, before it takes in any chunk. Import is all or nothing: the whole stream is read
and every chunk verified while the chunks this store lacks are staged under
temporary names (store/imports.py, as a pull does; gc never sees them); only
after the END record checked out is the store lock taken (shared, so gc cannot
take a chunk the manifest relies on), the chunks published and the manifest
written last. A slow stream therefore never holds the lock (a gc waiting behind
it would hold up every checkpoint), and a cut, corrupt or refused stream leaves
no snapshot and no chunk behind; a full store is ImportSpaceFull.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Protocol

import structlog

from snapd_daemon.errors import ImportInvalid, ImportSpaceFull, InvalidRequest, StoreFull
from snapd_daemon.snapshots import naming
from snapd_daemon.snapshots.catalog import Catalog, chunk_corrupt
from snapd_daemon.snapshots.manifest import Manifest
from snapd_daemon.snapshots.seal import open_manifest
from snapd_daemon.snapshots.signing import FleetKeys
from snapd_daemon.store import bundle, codec
from snapd_daemon.store.model import ZERO_CHUNK, ChunkUnreadable

log = structlog.get_logger()


class Claim(Protocol):
    """Holds a snapshot id for the import's duration (the operation registry's claim)."""

    def __call__(self, snapshot_id: str) -> AbstractContextManager[object]: ...


def export_stream(catalog: Catalog, manifest: Manifest, keys: FleetKeys) -> Iterator[bytes | memoryview]:
    """The export stream of ``manifest``'s snapshot, piece by piece, its manifest signed with
    ``keys``' signing key when there is one."""
    store = catalog.store
    writer = bundle.Writer()
    yield from writer.header(manifest.to_json(keys.signer()).encode())
    for cid in sorted(manifest.chunk_ids()):
        try:
            stored = store.read_stored(cid)
        except ChunkUnreadable as err:
            raise chunk_corrupt(manifest, err) from err
        yield from writer.chunk(cid, stored)
    yield from writer.end()


def _open(data: bytes, keys: FleetKeys) -> Manifest:
    """The stream's manifest, opened (seal.py), validated as a checkpoint request is
    (naming.py) and its signature checked (signing.py)."""
    where = "of the import stream"
    opened = open_manifest(data, where, action="the import is refused and nothing of it was kept")
    manifest = opened.manifest
    try:
        naming.snapshot_name(manifest.name)
        naming.labels(manifest.labels)
        naming.recorded_text({"hostname": manifest.hostname, "kernel": manifest.kernel,
                              "criu_version": manifest.criu_version})
    except InvalidRequest as err:
        raise ImportInvalid(reason=f"the manifest of snapshot {manifest.id} has an invalid {err.fields['field']}: "
                            f"{err.fields['reason']}") from None
    keys.check(opened.seal, opened.signature, manifest.id, "the import stream")
    return manifest


def import_stream(catalog: Catalog, pieces: Iterable[bytes], claim: Claim, keys: FleetKeys) -> tuple[Manifest, bool]:
    """Read an export stream into the store; (the snapshot, whether it is new here). A snapshot
    the store already has is verified like any other and left as it is."""
    reader = bundle.Reader(pieces)
    manifest = _open(reader.manifest(), keys)
    needed = {ref.id: ref.length for entry in manifest.files for ref in entry.chunks if ref.id != ZERO_CHUNK}
    try:
        return _take_in(catalog, reader, manifest, needed, claim)
    except StoreFull as full:
        raise full.recast(ImportSpaceFull, snapshot_id=manifest.id) from full


def _take_in(catalog: Catalog, reader: bundle.Reader, manifest: Manifest, needed: dict[str, int],
             claim: Claim) -> tuple[Manifest, bool]:
    store = catalog.store
    with claim(manifest.id), store.begin_import() as imported:
        for cid, stored in reader.chunks():
            if cid not in needed:
                raise ImportInvalid(reason=f"chunk {cid} is not one the manifest of {manifest.id} names")
            if codec.HEADER.unpack_from(stored)[2] != needed[cid]:
                raise ImportInvalid(reason=f"chunk {cid} holds {codec.HEADER.unpack_from(stored)[2]} bytes, the "
                                    f"manifest says {needed[cid]}")
            imported.add(cid, stored)  # even one the store has: gc may take it before the commit
        known = catalog.find(manifest.id)
        if known is not None:
            return known, False
        missing = sorted(cid for cid in needed if not imported.has(cid))
        if missing:
            raise ImportInvalid(reason=f"{len(missing)} chunk(s) the manifest names are neither in the stream nor in "
                                f"this store, e.g. {missing[0]}")
        catalog.adopt(imported, manifest)
    log.info("snapshot.imported", snapshot=manifest.id, new_bytes=manifest.new_bytes)
    return manifest, True
