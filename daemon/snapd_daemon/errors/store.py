"""Failures of the snapshot store: space, chunks, manifests, names, imports."""

from __future__ import annotations

from typing import Any

from snapd_daemon.errors.base import SnapdError


class SnapshotNotFound(SnapdError):
    """snapshot {snapshot!r} not found (neither an id, a name, nor the start of an id); `snapd list` shows what exists."""

    exit_code = 14
    status = "NOT_FOUND"


class StoreFull(SnapdError):
    """no space left in {path} while writing the snapshot: {needed} bytes needed, {free} free; nothing was stored and the process was left running. Free space there (`snapd rm`, `snapd gc`) and retry."""

    exit_code = 18
    status = "RESOURCE_EXHAUSTED"

    def recast(self, cls: type[StoreFull], **fields: Any) -> StoreFull:
        """The same shortage (path, needed, free) as operation ``cls`` tells it."""
        return self if isinstance(self, cls) else cls(**{**self.fields, **fields})


class RestoreSpaceFull(StoreFull):
    """no space left in {path} for the restore of snapshot {snapshot_id}: {needed} bytes needed, {free} free; nothing was restored. Free space there (`snapd rm`, `snapd gc`; staging: a larger RAM staging directory) and retry."""


class ImportSpaceFull(StoreFull):
    """no space left in {path} while importing snapshot {snapshot_id}: {needed} bytes needed, {free} free; nothing of the import was kept. Free space there (`snapd rm`, `snapd gc`) and import again."""


class PullSpaceFull(StoreFull):
    """no space left in {path} while pulling snapshot {snapshot_id}: {needed} bytes needed, {free} free; nothing of it was kept locally. Free space there (`snapd rm`, `snapd gc`) and pull again."""


class PrefetchSpaceFull(StoreFull):
    """no room in {path} for the hot copy of snapshot {snapshot_id}: {needed} bytes needed, {free} free; nothing was added to the hot tier. Drop another snapshot's (`snapd prefetch --drop`) or free memory, and retry."""


class SpaceFull(StoreFull):
    """no space left in {path} during {doing}: {free} bytes free. Free space there (`snapd rm`, `snapd gc`) and retry."""


class ExportSpaceFull(StoreFull):
    """no space left in {path} while exporting snapshot {snapshot_id} there: {needed} bytes written before it ran out, {free} free; the partial file was removed. Free space there or export elsewhere (`-o -` streams it)."""


class StoreError(SnapdError):
    """snapshot store {path}: {reason}"""

    exit_code = 19
    status = "INTERNAL"


class SnapshotBusy(SnapdError):
    """snapshot {snapshot_id} is in use by operation {operation_id}; retry when it ends."""

    exit_code = 21
    status = "ABORTED"


class ChunkCorrupt(SnapdError):
    """snapshot {snapshot_id}: chunk {chunk} ({file} at offset {offset}) is {problem}; the snapshot cannot be restored. `snapd fsck` lists every damaged chunk."""

    exit_code = 24
    status = "DATA_LOSS"


class ManifestDamaged(SnapdError):
    """manifest {where} (snapshot {snapshot_id}) is damaged: {problem}; {action}"""

    exit_code = 32
    status = "DATA_LOSS"


class ManifestUnsigned(SnapdError):
    """snapshot {snapshot_id} ({where}) is refused: {problem}; require_signed is on, so only manifests signed by a key of trusted_key are taken in. Push it again from a host whose signing_key is trusted here."""

    exit_code = 33
    status = "PERMISSION_DENIED"


class SignatureInvalid(SnapdError):
    """snapshot {snapshot_id} ({where}) is refused: its signature by key {key_id} {problem}; the manifest was changed after it was signed, or signed by another key. Nothing was taken in."""

    exit_code = 34
    status = "PERMISSION_DENIED"


class SnapshotPinned(SnapdError):
    """snapshot {snapshot_id} is pinned; `snapd unpin {snapshot_id}` first."""

    exit_code = 25
    status = "FAILED_PRECONDITION"


class SnapshotAmbiguous(SnapdError):
    """{ref!r} starts {count} snapshot ids: {candidates}; give more of the id."""

    exit_code = 50
    status = "INVALID_ARGUMENT"


class ImportInvalid(SnapdError):
    """import refused, nothing of it was kept: {reason}"""

    exit_code = 51
    status = "INVALID_ARGUMENT"
