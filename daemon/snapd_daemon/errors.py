"""Every failure snapd reports, one class each.

A class's docstring is its message template (``str.format`` fields filled from
the keyword arguments given at raise time). Each class carries the CLI exit
code and the name of the gRPC status code the API edge maps it to
(``api/status.py``, the one place that translates errors); this module imports
nothing of gRPC, so every layer may raise these.
"""

from __future__ import annotations

from typing import Any, ClassVar


class SnapdError(Exception):
    """{detail}"""

    exit_code: ClassVar[int] = 1
    status: ClassVar[str] = "INTERNAL"

    def __init__(self, **fields: Any) -> None:
        self.fields = fields
        template = (type(self).__doc__ or "{detail}").strip()
        try:
            message = template.format(**fields)
        except (KeyError, IndexError):
            message = f"{template} {fields}"
        super().__init__(message)

    @property
    def message(self) -> str:
        return str(self)


class InvalidRequest(SnapdError):
    """invalid {field}: {reason}"""

    exit_code = 10
    status = "INVALID_ARGUMENT"


class ProcessNotFound(SnapdError):
    """pid {pid}: no such process. Check the pid with `ps -p {pid}`."""

    exit_code = 11
    status = "NOT_FOUND"


class ProcessProtected(SnapdError):
    """pid {pid} ({name}) cannot be checkpointed: {reason}."""

    exit_code = 12
    status = "FAILED_PRECONDITION"


class ProcessBusy(SnapdError):
    """pid {pid} is already part of running operation {operation_id}; wait for it to finish."""

    exit_code = 13
    status = "ABORTED"


class SnapshotNotFound(SnapdError):
    """snapshot {snapshot!r} not found (neither an id, a name, nor the start of an id); `snapd list` shows what exists."""

    exit_code = 14
    status = "NOT_FOUND"


class PidsInUse(SnapdError):
    """cannot restore snapshot {snapshot_id}: pid {pid} ({name}) of the snapshot is alive on this host; stop it first (a snapshot restores with its original pids)."""

    exit_code = 15
    status = "FAILED_PRECONDITION"


class PidsStillExiting(SnapdError):
    """cannot restore snapshot {snapshot_id}: pid {pid} is still held by an exiting process after {seconds:.0f} s (a zombie whose parent, pid {ppid}, has not reaped it?)."""

    exit_code = 23
    status = "UNAVAILABLE"


class CriuFailed(SnapdError):
    """criu {action} of pid {pid} failed: {reason}
--- criu log ({log}) tail ---
{log_tail}"""

    exit_code = 16
    status = "INTERNAL"


class CriuUnavailable(SnapdError):
    """criu is not usable: {reason}. Run scripts/install-criu.sh or pass --criu PATH."""

    exit_code = 17
    status = "FAILED_PRECONDITION"


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


class ShuttingDown(SnapdError):
    """the daemon is shutting down and accepts no new operations; retry once it is back."""

    exit_code = 20
    status = "UNAVAILABLE"


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


class GpuUnsupported(SnapdError):
    """pid {pid} ({name}) cannot be checkpointed with its GPU state: {reason}. Fix: {fix}"""

    exit_code = 26
    status = "FAILED_PRECONDITION"


class GpuMismatch(SnapdError):
    """snapshot {snapshot_id} cannot be restored on this host's GPUs: {reason}"""

    exit_code = 27
    status = "FAILED_PRECONDITION"


class GpusBusy(SnapdError):
    """snapshot {snapshot_id}: no free {model} here for its GPU {uuid}; every one is in use ({busy}). Wait for \
one to be freed, restore with --gpu-policy shared to share one that has room, or name one with --gpu-map \
(gpu_uuid_map) to share it."""

    exit_code = 61
    status = "RESOURCE_EXHAUSTED"


class GpuRoomShort(SnapdError):
    """snapshot {snapshot_id}: no {model} here has room for what its processes held on GPU {uuid} \
({needed_bytes} bytes with the margin); {gpus}. Wait for room, or name a GPU with --gpu-map (gpu_uuid_map) to \
place it there regardless."""

    exit_code = 80
    status = "RESOURCE_EXHAUSTED"


class NcclActive(SnapdError):
    """pid {pid} ({name}) holds live NCCL state ({evidence}); the CUDA driver cannot checkpoint NCCL \
communicators. Fix: tear them down in a pre-checkpoint hook (torch: dist.destroy_process_group()) and build \
them again in a post-restore hook (docs/gpu.md: "Tensor parallel servers")."""

    exit_code = 62
    status = "FAILED_PRECONDITION"


class PublishFailed(SnapdError):
    """could not publish port {port} of the restored tree (pid {pid}) on {address}: {reason}; the restored \
tree was killed"""

    exit_code = 63
    status = "UNAVAILABLE"


class CudaFailed(SnapdError):
    """CUDA {action} of pid {pid} failed: {reason}{rollback}"""

    exit_code = 28
    status = "INTERNAL"


class HostMemoryShort(SnapdError):
    """the CUDA checkpoint of pids {pids} would copy {vram} bytes of GPU memory into their host memory, and {where} has room for {room}; nothing was frozen, the processes were left running (as the pre-checkpoint hook, if any, left them). Release GPU memory before the checkpoint (a vLLM server: a --pre-hook calling its POST /sleep?level=1) or make room in host memory."""

    exit_code = 64
    status = "RESOURCE_EXHAUSTED"


class HookFailed(SnapdError):
    """{hook} hook {argv} failed: {reason}{rollback}"""

    exit_code = 29
    status = "FAILED_PRECONDITION"


class InjectFailed(SnapdError):
    """restoring snapshot {snapshot_id}: writing {length} bytes into pid {pid} at {address} failed ({reason}); the partly restored tree was killed."""

    exit_code = 30
    status = "INTERNAL"


class RestoreAborted(SnapdError):
    """restoring snapshot {snapshot_id}: {reason}; the restored tree was killed before any of it ran."""

    exit_code = 31
    status = "ABORTED"


class CgroupTooSmall(SnapdError):
    """cannot restore snapshot {snapshot_id} into cgroup {cgroup}: {reason}. Raise the limit or pick another cgroup; nothing was restored."""

    exit_code = 40
    status = "FAILED_PRECONDITION"


class CgroupFailed(SnapdError):
    """cgroup {cgroup}: {reason}"""

    exit_code = 41
    status = "FAILED_PRECONDITION"


class PermissionDenied(SnapdError):
    """permission denied: {reason}"""

    exit_code = 42
    status = "PERMISSION_DENIED"


class RestoreLogUnavailable(SnapdError):
    """cannot open restore log {path} for the restored tree's stdio: {reason}; nothing was restored."""

    exit_code = 44
    status = "FAILED_PRECONDITION"


class Cancelled(SnapdError):
    """operation {operation_id} was cancelled before its commit point ({why}); {undone}"""

    exit_code = 45
    status = "CANCELLED"


class DaemonNotRoot(SnapdError):
    """`snapd serve` runs as root (CRIU needs CAP_SYS_ADMIN, CAP_SYS_PTRACE and more to dump and restore other users' processes), not as uid {uid}: run it as root (`sudo snapd serve ...` where sudo exists), or through gpu-snapd.service (docs/operating.md). `snapd serve --check-config` works as any user."""

    exit_code = 48
    status = "FAILED_PRECONDITION"


class ConfigInvalid(SnapdError):
    """invalid configuration ({source}): {reason}"""

    exit_code = 43
    status = "FAILED_PRECONDITION"


class SnapshotAmbiguous(SnapdError):
    """{ref!r} starts {count} snapshot ids: {candidates}; give more of the id."""

    exit_code = 50
    status = "INVALID_ARGUMENT"


class ImportInvalid(SnapdError):
    """import refused, nothing of it was kept: {reason}"""

    exit_code = 51
    status = "INVALID_ARGUMENT"


class RemoteUnreachable(SnapdError):
    """remote store {endpoint} (bucket {bucket}) unreachable while {action} {key}: {reason}. Check the endpoint, the network and that the server runs; snapd retried {retries} time(s) with backoff."""

    exit_code = 52
    status = "UNAVAILABLE"


class RemoteDenied(SnapdError):
    """remote store {endpoint} denied {action} {key} in bucket {bucket}: {reason}. Check the credentials (remote_credentials_file, AWS_* environment, profile) and the bucket's policy."""

    exit_code = 53
    status = "PERMISSION_DENIED"


class RemoteObjectBad(SnapdError):
    """remote object {key} in bucket {bucket} is {problem}; nothing was published from it. `snapd push` the snapshot again from a host that holds it intact."""

    exit_code = 54
    status = "DATA_LOSS"


class RemoteMissing(SnapdError):
    """remote store {endpoint} bucket {bucket}: {what} is not there (object {key}){hint}"""

    exit_code = 55
    status = "NOT_FOUND"


class RemoteBusy(SnapdError):
    """remote store {endpoint} bucket {bucket}: {reason}; retry when it has ended."""

    exit_code = 56
    status = "ABORTED"


class RemoteNotConfigured(SnapdError):
    """no remote store is configured for this daemon; set remote_endpoint and remote_bucket in its config.toml (see `snapd serve --help`)."""

    exit_code = 57
    status = "FAILED_PRECONDITION"


class RemoteFailed(SnapdError):
    """remote store {endpoint} bucket {bucket}: {action} {key} failed: {reason}"""

    exit_code = 58
    status = "UNAVAILABLE"


class RemoteUndecryptable(SnapdError):
    """remote object {key} in bucket {bucket} ({sealing}) was refused: {reason}; nothing was published from it."""

    exit_code = 35
    status = "DATA_LOSS"


class RemoteKeyMissing(SnapdError):
    """remote object {key} in bucket {bucket} is encrypted with key id {key_id}, which this host does not hold (it holds {held}); add that key's file to remote_read_key in config.toml (or make it remote_encryption_key) and restart the daemon; nothing was published from it."""

    exit_code = 36
    status = "FAILED_PRECONDITION"


class InstanceNotFound(SnapdError):
    """instance {instance!r} not found (neither an id nor the start of one); `snapd ps -a` lists the instances the daemon keeps."""

    exit_code = 70
    status = "NOT_FOUND"


class InstanceAmbiguous(SnapdError):
    """{ref!r} starts {count} instance ids: {candidates}; give more of the id."""

    exit_code = 71
    status = "INVALID_ARGUMENT"


class SnapshotHasInstances(SnapdError):
    """snapshot {snapshot_id} has {count} running instance(s): {instances}; stop them first (`snapd stop ID`), or delete it anyway with --force (they keep running)."""

    exit_code = 72
    status = "FAILED_PRECONDITION"


class InstanceStopFailed(SnapdError):
    """instance {instance} did not stop: {reason}"""

    exit_code = 73
    status = "INTERNAL"


class InstanceStarting(SnapdError):
    """instance {instance} is still starting (its restore, operation {operation_id}, runs); wait for it, or cancel it with `snapd cancel {operation_id}`."""

    exit_code = 75
    status = "FAILED_PRECONDITION"


class EventsExpired(SnapdError):
    """cannot resume events after sequence {after}: {reason}. List the instances (`snapd ps -a`) for the current state, then watch from 0 (new events only)."""

    exit_code = 74
    status = "OUT_OF_RANGE"


def describe_exception(exc: BaseException) -> str:
    """What an unexpected exception says, in words, without Python's class name (which means
    nothing to a user): a missing key, a file error without "[Errno N]", else its message."""
    if isinstance(exc, KeyError) and exc.args:
        return f"the field {exc.args[0]!r} is missing"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    if isinstance(exc, UnicodeDecodeError):
        return "it is not UTF-8 text"
    return str(exc).strip() or "no detail was given"


class LinkRemapMissing(SnapdError):
    """snapshot {snapshot_id}: the link {path} that keeps an unlinked open file of the tree for restores cannot be used ({reason}); the snapshot cannot be restored on this host. Checkpoint the source again, or `snapd rm` the snapshot."""

    exit_code = 46
    status = "FAILED_PRECONDITION"


class LinkRemapFailed(SnapdError):
    """cannot keep CRIU's link {path} to a file pid {pid} holds open after its name was unlinked ({reason}); nothing was stored. Make room or permissions in that directory, or close the file before checkpointing."""

    exit_code = 47
    status = "FAILED_PRECONDITION"


ALL_ERRORS: tuple[type[SnapdError], ...] = (
    SnapdError,
    InvalidRequest,
    ProcessNotFound,
    ProcessProtected,
    ProcessBusy,
    SnapshotNotFound,
    PidsInUse,
    PidsStillExiting,
    CriuFailed,
    CriuUnavailable,
    LinkRemapMissing,
    LinkRemapFailed,
    StoreFull,
    RestoreSpaceFull,
    ImportSpaceFull,
    PullSpaceFull,
    PrefetchSpaceFull,
    SpaceFull,
    ExportSpaceFull,
    StoreError,
    ShuttingDown,
    SnapshotBusy,
    ChunkCorrupt,
    ManifestDamaged,
    ManifestUnsigned,
    SignatureInvalid,
    SnapshotPinned,
    GpuUnsupported,
    GpuMismatch,
    GpusBusy,
    GpuRoomShort,
    NcclActive,
    PublishFailed,
    CudaFailed,
    HookFailed,
    InjectFailed,
    RestoreAborted,
    CgroupTooSmall,
    CgroupFailed,
    PermissionDenied,
    DaemonNotRoot,
    ConfigInvalid,
    RestoreLogUnavailable,
    Cancelled,
    SnapshotAmbiguous,
    ImportInvalid,
    RemoteUnreachable,
    RemoteDenied,
    RemoteObjectBad,
    RemoteMissing,
    RemoteBusy,
    RemoteNotConfigured,
    RemoteFailed,
    RemoteUndecryptable,
    RemoteKeyMissing,
    InstanceNotFound,
    InstanceAmbiguous,
    SnapshotHasInstances,
    InstanceStopFailed,
    InstanceStarting,
    EventsExpired,
)
