"""Every failure snapd reports, one class each.

A class's docstring is its message template (``str.format`` fields filled from
the keyword arguments given at raise time). Each class carries the CLI exit
code and the gRPC status that the edges (servicer, CLI) map it to; nothing
else in the code base translates errors.
"""

from __future__ import annotations

from typing import Any, ClassVar

import grpc


class SnapdError(Exception):
    """{detail}"""

    exit_code: ClassVar[int] = 1
    status: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL

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
    status = grpc.StatusCode.INVALID_ARGUMENT


class ProcessNotFound(SnapdError):
    """pid {pid}: no such process. Check the pid with `ps -p {pid}`."""

    exit_code = 11
    status = grpc.StatusCode.NOT_FOUND


class ProcessProtected(SnapdError):
    """pid {pid} ({name}) cannot be checkpointed: {reason}."""

    exit_code = 12
    status = grpc.StatusCode.FAILED_PRECONDITION


class ProcessBusy(SnapdError):
    """pid {pid} is already part of running operation {operation_id}; wait for it to finish."""

    exit_code = 13
    status = grpc.StatusCode.ABORTED


class SnapshotNotFound(SnapdError):
    """snapshot {snapshot!r} not found (neither an id nor a name); `snapd list` shows what exists."""

    exit_code = 14
    status = grpc.StatusCode.NOT_FOUND


class PidsInUse(SnapdError):
    """cannot restore snapshot {snapshot_id}: pid {pid} ({name}) of the snapshot is alive on this host; stop it first (a snapshot restores with its original pids)."""

    exit_code = 15
    status = grpc.StatusCode.FAILED_PRECONDITION


class PidsStillExiting(SnapdError):
    """cannot restore snapshot {snapshot_id}: pid {pid} is still held by an exiting process after {seconds:.0f} s (a zombie whose parent, pid {ppid}, has not reaped it?)."""

    exit_code = 23
    status = grpc.StatusCode.UNAVAILABLE


class CriuFailed(SnapdError):
    """criu {action} of pid {pid} failed: {reason}
--- criu log ({log}) tail ---
{log_tail}"""

    exit_code = 16
    status = grpc.StatusCode.INTERNAL


class CriuUnavailable(SnapdError):
    """criu is not usable: {reason}. Run scripts/install-criu.sh or pass --criu PATH."""

    exit_code = 17
    status = grpc.StatusCode.FAILED_PRECONDITION


class StoreFull(SnapdError):
    """no space left in store {path} while writing snapshot: {needed} bytes needed, {free} free. Free space (`snapd rm`) and retry; the process was left running."""

    exit_code = 18
    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class StoreError(SnapdError):
    """snapshot store {path}: {reason}"""

    exit_code = 19
    status = grpc.StatusCode.INTERNAL


class ShuttingDown(SnapdError):
    """the daemon is shutting down and accepts no new operations; retry once it is back."""

    exit_code = 20
    status = grpc.StatusCode.UNAVAILABLE


class SnapshotBusy(SnapdError):
    """snapshot {snapshot_id} is in use by operation {operation_id}; retry when it ends."""

    exit_code = 21
    status = grpc.StatusCode.ABORTED


class ChunkCorrupt(SnapdError):
    """snapshot {snapshot_id}: chunk {chunk} ({file} at offset {offset}) is {problem}; the snapshot cannot be restored. `snapd fsck` lists every damaged chunk."""

    exit_code = 24
    status = grpc.StatusCode.DATA_LOSS


class SnapshotPinned(SnapdError):
    """snapshot {snapshot_id} is pinned; `snapd unpin {snapshot_id}` first."""

    exit_code = 25
    status = grpc.StatusCode.FAILED_PRECONDITION


class GpuUnsupported(SnapdError):
    """pid {pid} ({name}) cannot be checkpointed with its GPU state: {reason}. Fix: {fix}"""

    exit_code = 26
    status = grpc.StatusCode.FAILED_PRECONDITION


class GpuMismatch(SnapdError):
    """snapshot {snapshot_id} cannot be restored on this host's GPUs: {reason}"""

    exit_code = 27
    status = grpc.StatusCode.FAILED_PRECONDITION


class CudaFailed(SnapdError):
    """CUDA {action} of pid {pid} failed: {reason}{rollback}"""

    exit_code = 28
    status = grpc.StatusCode.INTERNAL


class HookFailed(SnapdError):
    """{hook} hook {argv} failed: {reason}{rollback}"""

    exit_code = 29
    status = grpc.StatusCode.FAILED_PRECONDITION


class InjectFailed(SnapdError):
    """restoring snapshot {snapshot_id}: writing {length} bytes into pid {pid} at {address} failed ({reason}); the partly restored tree was killed."""

    exit_code = 30
    status = grpc.StatusCode.INTERNAL


class CgroupTooSmall(SnapdError):
    """cannot restore snapshot {snapshot_id} into cgroup {cgroup}: {reason}. Raise the limit or pick another cgroup; nothing was restored."""

    exit_code = 40
    status = grpc.StatusCode.FAILED_PRECONDITION


class CgroupFailed(SnapdError):
    """cgroup {cgroup}: {reason}"""

    exit_code = 41
    status = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(SnapdError):
    """permission denied: {reason}"""

    exit_code = 42
    status = grpc.StatusCode.PERMISSION_DENIED


class RestoreLogUnavailable(SnapdError):
    """cannot open restore log {path} for the restored tree's stdio: {reason}; nothing was restored."""

    exit_code = 44
    status = grpc.StatusCode.FAILED_PRECONDITION


class ConfigInvalid(SnapdError):
    """invalid configuration ({source}): {reason}"""

    exit_code = 43
    status = grpc.StatusCode.FAILED_PRECONDITION


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
    StoreFull,
    StoreError,
    ShuttingDown,
    SnapshotBusy,
    ChunkCorrupt,
    SnapshotPinned,
    GpuUnsupported,
    GpuMismatch,
    CudaFailed,
    HookFailed,
    InjectFailed,
    CgroupTooSmall,
    CgroupFailed,
    PermissionDenied,
    ConfigInvalid,
    RestoreLogUnavailable,
)
