"""The remote tier's snapshots: its manifests fetched (in parallel) and opened (seal.py), found by id or name."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import structlog

from snapd_daemon.errors import ManifestDamaged, RemoteMissing, RemoteNotConfigured, RemoteObjectBad
from snapd_daemon.runtime import Runtime
from snapd_daemon.snapshots.manifest import Manifest
from snapd_daemon.snapshots.seal import Opened, open_manifest
from snapd_daemon.snapshots.signing import FleetKeys
from snapd_daemon.store.remote import RemoteStore

log = structlog.get_logger()
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


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


def _opened(remote: RemoteStore, strict: bool) -> list[Opened]:
    def one(manifest_id: str) -> Opened | None:
        data = remote.get_manifest(manifest_id)
        if data is None:
            return None
        try:
            return parse(remote, manifest_id, data)
        except (RemoteObjectBad, ManifestDamaged) as err:
            if strict:
                raise
            log.error("remote.manifest_unreadable", manifest=manifest_id, error=err.message)
            return None

    with ThreadPoolExecutor(remote.cfg.threads, thread_name_prefix="remote-list") as pool:
        found = [o for o in pool.map(one, remote.manifest_ids()) if o is not None]
    return sorted(found, key=lambda o: (o.manifest.created, o.manifest.id))


def remote_snapshots(remote: RemoteStore, strict: bool = False) -> list[Manifest]:
    """Every snapshot the bucket holds, oldest first. A manifest that vanishes while listed
    is left out; one that fails its seal or does not parse is logged and left out, or, with
    ``strict``, raises (gc must know every live chunk)."""
    return [o.manifest for o in _opened(remote, strict)]


def find(remote: RemoteStore, ref: str, keys: FleetKeys) -> Manifest:
    """The remote snapshot ``ref`` names (by id, else the newest of that name), its signature
    checked against ``keys`` (signing.py) before anything of it is used."""
    data = remote.get_manifest(ref) if _could_be_id(ref) else None
    if data is not None:
        opened = parse(remote, ref, data)
    else:
        named = [o for o in _opened(remote, False) if o.manifest.name == ref]
        if not named:
            raise RemoteMissing(endpoint=remote.cfg.endpoint, bucket=remote.cfg.bucket,
                                what=f"snapshot {ref!r} (as an id or a name)",
                                key=remote.describe(remote.manifest_key(ref) if _could_be_id(ref) else "manifests/"),
                                hint="; `snapd list --remote` shows what it holds")
        opened = named[-1]
    m = opened.manifest
    keys.check(opened.seal, opened.signature, m.id, remote.describe(remote.manifest_key(m.id)))
    return m


def _could_be_id(ref: str) -> bool:
    return _ID_RE.fullmatch(ref) is not None
