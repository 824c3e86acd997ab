"""Failures of GPU trees: the CUDA driver, placement, NCCL."""

from __future__ import annotations

from snapd_daemon.errors.base import SnapdError


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


class CudaFailed(SnapdError):
    """CUDA {action} of pid {pid} failed: {reason}{rollback}"""

    exit_code = 28
    status = "INTERNAL"
