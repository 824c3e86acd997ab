"""The remote tier's snapshots: its manifests fetched (in parallel) and parsed, found by id or name."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import structlog

from snapd_daemon.errors import RemoteMissing, RemoteNotConfigured, RemoteObjectBad, describe_exception
from snapd_daemon.runtime import Runtime
from snapd_daemon.snapshots.manifest import Manifest
from snapd_daemon.store.remote import RemoteStore

log = structlog.get_logger()
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def require_remote(rt: Runtime) -> RemoteStore:
    if rt.remote is None:
        raise RemoteNotConfigured()
    return rt.remote


def parse(remote: RemoteStore, manifest_id: str, data: bytes) -> Manifest:
    """A remote manifest parsed; RemoteObjectBad naming it when it does not parse."""
    try:
        m = Manifest.from_json(data.decode())
    except Exception as exc:
        raise RemoteObjectBad(key=remote.describe(remote.manifest_key(manifest_id)), bucket=remote.cfg.bucket,
                              problem=f"not a manifest this snapd reads ({describe_exception(exc)})") from None
    if m.id != manifest_id:
        raise RemoteObjectBad(key=remote.describe(remote.manifest_key(manifest_id)), bucket=remote.cfg.bucket,
                              problem=f"the manifest of snapshot {m.id}, not of {manifest_id}")
    return m


def remote_snapshots(remote: RemoteStore, strict: bool = False) -> list[Manifest]:
    """Every snapshot the bucket holds, oldest first. A manifest that vanishes while listed
    is left out; one that does not parse is logged and left out, or, with ``strict``,
    raises RemoteObjectBad (gc must know every live chunk)."""

    def one(manifest_id: str) -> Manifest | None:
        data = remote.get_manifest(manifest_id)
        if data is None:
            return None
        try:
            return parse(remote, manifest_id, data)
        except RemoteObjectBad as err:
            if strict:
                raise
            log.error("remote.manifest_unreadable", manifest=manifest_id, error=err.message)
            return None

    with ThreadPoolExecutor(remote.cfg.threads, thread_name_prefix="remote-list") as pool:
        found = [m for m in pool.map(one, remote.manifest_ids()) if m is not None]
    return sorted(found, key=lambda m: (m.created, m.id))


def find(remote: RemoteStore, ref: str) -> Manifest:
    """The remote snapshot ``ref`` names: by id, else the newest of that name."""
    data = remote.get_manifest(ref) if _could_be_id(ref) else None
    if data is not None:
        return parse(remote, ref, data)
    named = [m for m in remote_snapshots(remote) if m.name == ref]
    if not named:
        raise RemoteMissing(endpoint=remote.cfg.endpoint, bucket=remote.cfg.bucket,
                            what=f"snapshot {ref!r} (as an id or a name)",
                            key=remote.describe(remote.manifest_key(ref) if _could_be_id(ref) else "manifests/"),
                            hint="; `snapd list --remote` shows what it holds")
    return named[-1]


def _could_be_id(ref: str) -> bool:
    return _ID_RE.fullmatch(ref) is not None
