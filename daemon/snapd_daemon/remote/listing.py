"""The remote tier's snapshots: its manifests fetched (in parallel), opened and parsed, found by id or name."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import structlog

from snapd_daemon.errors import (
    RemoteKeyMissing,
    RemoteMissing,
    RemoteNotConfigured,
    RemoteObjectBad,
    RemoteUndecryptable,
    describe_exception,
)
from snapd_daemon.runtime import Runtime
from snapd_daemon.snapshots.manifest import Manifest
from snapd_daemon.store.remote import RemoteStore

log = structlog.get_logger()
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# a manifest that cannot be listed: unparsable, failing authentication, or sealed with a key not held
UNREADABLE = (RemoteObjectBad, RemoteUndecryptable, RemoteKeyMissing)


@dataclass(frozen=True)
class RemoteSnapshot:
    """A snapshot in the bucket: its manifest and the key id that sealed it, under which its
    chunks are named and sealed too (None: plaintext)."""

    manifest: Manifest
    key_id: str | None

    def chunk_names(self, remote: RemoteStore) -> set[str]:
        """The object names of its chunks."""
        return {remote.envelope.chunk_name(cid, self.key_id) for cid in self.manifest.chunk_ids()}


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
            return RemoteSnapshot(parse(remote, manifest_id, opened[0]), opened[1])
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


def find(remote: RemoteStore, ref: str) -> RemoteSnapshot:
    """The remote snapshot ``ref`` names: by id, else the newest of that name (RemoteMissing
    saying which manifests could not be read when none of them has it)."""
    opened = remote.get_manifest(ref) if _could_be_id(ref) else None
    if opened is not None:
        return RemoteSnapshot(parse(remote, ref, opened[0]), opened[1])
    unreadable: list[str] = []
    named = [s for s in remote_snapshots(remote, unreadable=unreadable) if s.manifest.name == ref]
    if not named:
        skipped = f"; {len(unreadable)} manifest(s) could not be read, the first: {unreadable[0]}" if unreadable else ""
        raise RemoteMissing(endpoint=remote.cfg.endpoint, bucket=remote.cfg.bucket,
                            what=f"snapshot {ref!r} (as an id or a name)",
                            key=remote.describe(remote.manifest_key(ref) if _could_be_id(ref) else "manifests/"),
                            hint=f"; `snapd list --remote` shows what it holds{skipped}")
    return named[-1]


def _could_be_id(ref: str) -> bool:
    return _ID_RE.fullmatch(ref) is not None
