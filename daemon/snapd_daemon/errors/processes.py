"""Failures of the process trees snapd checkpoints and restores, and of CRIU."""

from __future__ import annotations

from snapd_daemon.errors.base import SnapdError


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


class RestoreLogUnavailable(SnapdError):
    """cannot open restore log {path} for the restored tree's stdio: {reason}; nothing was restored."""

    exit_code = 44
    status = "FAILED_PRECONDITION"


class PublishFailed(SnapdError):
    """could not publish port {port} of the restored tree (pid {pid}) on {address}: {reason}; the restored \
tree was killed"""

    exit_code = 63
    status = "UNAVAILABLE"


class LinkRemapMissing(SnapdError):
    """snapshot {snapshot_id}: the link {path} that keeps an unlinked open file of the tree for restores cannot be used ({reason}); the snapshot cannot be restored on this host. Checkpoint the source again, or `snapd rm` the snapshot."""

    exit_code = 46
    status = "FAILED_PRECONDITION"


class LinkRemapFailed(SnapdError):
    """cannot keep CRIU's link {path} to a file pid {pid} holds open after its name was unlinked ({reason}); nothing was stored. Make room or permissions in that directory, or close the file before checkpointing."""

    exit_code = 47
    status = "FAILED_PRECONDITION"


class SandboxNotFound(SnapdError):
    """cannot restore into pid {pid}: {reason}. Give the pid of a process of the container or pod sandbox to restore into (its infra / pause process: `podman inspect -f '{{{{.State.Pid}}}}' CONTAINER`, `crictl inspect` on Kubernetes); nothing was restored."""

    exit_code = 65
    status = "FAILED_PRECONDITION"


class SandboxRefused(SnapdError):
    """snapshot {snapshot_id} cannot be restored into a sandbox: {reason}; nothing was restored."""

    exit_code = 66
    status = "FAILED_PRECONDITION"


class SandboxJoinFailed(SnapdError):
    """restoring snapshot {snapshot_id} into the sandbox of pid {pid} failed: {reason}; the restored tree was killed and its cgroup removed."""

    exit_code = 67
    status = "ABORTED"
