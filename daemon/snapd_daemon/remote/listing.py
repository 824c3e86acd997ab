"""The remote tier's snapshots: its manifests fetched (in parallel), decrypted and opened (seal.py),
found by id or name."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import structlog

from snapd_daemon.errors import (
    ManifestDamaged,
    RemoteKeyMissing,
    RemoteMissing,
    RemoteNotConfigured,
    RemoteObjectBad,
    RemoteUndecryptable,
)
from snapd_daemon.runtime import Runtime
from snapd_daemon.snapshots.manifest import Manifest
from snapd_daemon.snapshots.seal import Opened, open_manifest
from snapd_daemon.snapshots.signing import FleetKeys
from snapd_daemon.store.remote import RemoteStore

log = structlog.get_logger()
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# a manifest that cannot be listed: unparsable, failing its seal or authentication, or sealed
# with a key not held
UNREADABLE = (RemoteObjectBad, RemoteUndecryptable, RemoteKeyMissing, ManifestDamaged)


@dataclass(frozen=True)
class RemoteSnapshot:
    """A snapshot in the bucket: its manifest, the key id that sealed it, under which its
    chunks are named and sealed too (None: plaintext), and the manifest's seal and
    signature member as stored (signing.py checks them)."""

    manifest: Manifest
    key_id: str | None
    seal: str = ""
    signature: Any = None

    def chunk_names(self, remote: RemoteStore) -> set[str]:
        """The object names of its chunks."""
        return {remote.envelope.chunk_name(cid, self.key_id) for cid in self.manifest.chunk_ids()}


def require_remote(rt: Runtime) -> RemoteStore:
    if rt.remote is None:
        raise RemoteNotConfigured()
    return rt.remote


def parse(remote: RemoteStore, manifest_id: str, data: bytes) -> Opened:
    """A remote manifest opened (seal.py: ManifestDamaged naming its key when it fails its
    seal or does not parse); RemoteObjectBad when it is another snapshot's."""
    key = remote.describe(remote.manifest_key(manifest_id))
    opened = open_manifest(data, key, manifest_id, "nothing was taken from the bucket, whose copy is left as it "
                           "is; push the snapshot again from a host that holds it intact")
    if opened.manifest.id != manifest_id:
        raise RemoteObjectBad(key=key, bucket=remote.cfg.bucket,
                              problem=f"the manifest of snapshot {opened.manifest.id}, not of {manifest_id}")
    return opened


def _snapshot(remote: RemoteStore, manifest_id: str, data: bytes, key_id: str | None) -> RemoteSnapshot:
    opened = parse(remote, manifest_id, data)
    return RemoteSnapshot(opened.manifest, key_id, opened.seal, opened.signature)


def remote_snapshots(remote: RemoteStore, strict: bool = False,
                     unreadable: list[str] | None = None) -> list[RemoteSnapshot]:
    """Every snapshot the bucket holds, oldest first. A manifest that vanishes while listed
    is left out; one that cannot be read (UNREADABLE) is logged and left out (its error
    appended to ``unreadable``), or, with ``strict``, raised (gc must know every live chunk)."""

    def one(manifest_id: str) -> RemoteSnapshot | None:
        try:
            opened = remote.get_manifest(manifest_id)
            if opened is None:
                return None
            return _snapshot(remote, manifest_id, *opened)
        except UNREADABLE as err:
            if strict:
                raise
            log.error("remote.manifest_unreadable", manifest=manifest_id, error=err.message)
            if unreadable is not None:
                unreadable.append(err.message)
            return None

    with ThreadPoolExecutor(remote.cfg.threads, thread_name_prefix="remote-list") as pool:
        found = [s for s in pool.map(one, remote.manifest_ids()) if s is not None]
    return sorted(found, key=lambda s: (s.manifest.created, s.manifest.id))


def find(remote: RemoteStore, ref: str, keys: FleetKeys) -> RemoteSnapshot:
    """The remote snapshot ``ref`` names: by id, else the newest of that name (RemoteMissing
    saying which manifests could not be read when none of them has it); its signature
    checked against ``keys`` (signing.py) before anything of it is used."""
    opened = remote.get_manifest(ref) if _could_be_id(ref) else None
    if opened is not None:
        snap = _snapshot(remote, ref, *opened)
    else:
        unreadable: list[str] = []
        named = [s for s in remote_snapshots(remote, unreadable=unreadable) if s.manifest.name == ref]
        if not named:
            skipped = (f"; {len(unreadable)} manifest(s) could not be read, the first: {unreadable[0]}"
                       if unreadable else "")
            raise RemoteMissing(endpoint=remote.cfg.endpoint, bucket=remote.cfg.bucket,
                                what=f"snapshot {ref!r} (as an id or a name)",
                                key=remote.describe(remote.manifest_key(ref) if _could_be_id(ref) else "manifests/"),
                                hint=f"; `snapd list --remote` shows what it holds{skipped}")
        snap = named[-1]
    keys.check(snap.seal, snap.signature, snap.manifest.id, remote.describe(remote.manifest_key(snap.manifest.id)))
    return snap


def _could_be_id(ref: str) -> bool:
    return _ID_RE.fullmatch(ref) is not None
