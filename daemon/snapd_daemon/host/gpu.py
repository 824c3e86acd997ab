"""GPU side of checkpoint and restore, through the CUDA driver's checkpoint API.

Checkpoint: refuse what cannot work before anything is touched (``preflight``),
then lock every CUDA process of the tree, then checkpoint each (VRAM into the
process's host memory): CRIU then sees plain CPU processes. ``CudaFreeze.thaw``
undoes exactly the steps that were done, in reverse, and is the rollback of
every failure after the first lock.
Restore: after CRIU, restore and unlock every CUDA process of the snapshot,
onto the same GPUs or onto others given as old -> new UUID pairs (where the
GPUs go is decided by ``host/gpuplace.py``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from snapd_daemon.errors import CudaFailed, GpuUnsupported
from snapd_daemon.host import cuda, nvml
from snapd_daemon.host.processes import ProcessTree, comm

log = structlog.get_logger()
MPS_PIPE_DEFAULT = "/tmp/nvidia-mps"


@dataclass(frozen=True)
class GpuDevice:
    index: int
    name: str
    uuid: str
    memory_bytes: int
    mig_enabled: bool = False


@dataclass(frozen=True)
class GpuRecord:
    """What a snapshot needs to know about the GPUs it was taken on."""

    driver_version: str
    cuda_driver_api: int
    devices: tuple[GpuDevice, ...]
    cuda_pids: tuple[int, ...] = field(default_factory=tuple)
    # UUIDs of the GPUs each CUDA pid had a context on (NVML); a pid missing: not
    # known, every device of the host then counts as used
    gpus_of: dict[int, tuple[str, ...]] = field(default_factory=dict)
    # GPU UUID -> bytes the CUDA pids held on it (NVML, at inspection, before the pre-checkpoint
    # hook: what the server works with, a KV cache a sleep hook frees included); a GPU missing:
    # not known (NVML did not list a pid's use), a restore then places it only on an idle GPU
    vram: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> GpuRecord:
        devices = tuple(GpuDevice(**d) for d in data["devices"])  # type: ignore[attr-defined]
        return cls(
            driver_version=str(data["driver_version"]),
            cuda_driver_api=int(data["cuda_driver_api"]),  # type: ignore[call-overload]
            devices=devices,
            cuda_pids=tuple(data["cuda_pids"]),  # type: ignore[arg-type]
            gpus_of={int(pid): tuple(uuids) for pid, uuids in data.get("gpus_of", {}).items()},  # type: ignore[attr-defined]
            vram={str(uuid): int(n) for uuid, n in data.get("vram", {}).items()},  # type: ignore[attr-defined]
        )

    def used(self) -> tuple[GpuDevice, ...]:
        """The devices the checkpointed processes used, in index order (all of them
        unless NVML listed every CUDA pid)."""
        if not self.cuda_pids or any(pid not in self.gpus_of for pid in self.cuda_pids):
            return self.devices
        wanted = {u for uuids in self.gpus_of.values() for u in uuids}
        return tuple(d for d in self.devices if d.uuid in wanted)


def inventory() -> tuple[str, tuple[GpuDevice, ...]]:
    """(driver version, devices) from NVML; ("", ()) when no NVIDIA driver is reachable."""
    view = nvml.read()
    return view.driver_version, devices_of(view)


def devices_of(view: nvml.NvmlView) -> tuple[GpuDevice, ...]:
    return tuple(GpuDevice(d.index, d.name, d.uuid, d.memory_bytes, d.mig_enabled) for d in view.devices)


def gpus_by_pid(view: nvml.NvmlView, pids: tuple[int, ...]) -> dict[int, tuple[str, ...]]:
    """UUIDs of the GPUs each of ``pids`` has a CUDA context on, as NVML lists
    compute processes (pids it does not list are left out; {} when NVML could not say)."""
    if view.error:
        log.warning("gpu.usage_unknown", error=view.error)
        return {}
    found: dict[int, tuple[str, ...]] = {}
    for device in view.devices:
        for pid in device.compute:
            if pid in pids:
                found[pid] = (*found.get(pid, ()), device.uuid)
    return found


def vram_by_gpu(view: nvml.NvmlView, pids: tuple[int, ...]) -> dict[str, int]:
    """GPU UUID -> bytes ``pids`` hold on it (NVML), for each GPU where NVML gave a figure for
    every one of them that it lists there (a GPU without one is left out: its need is unknown)."""
    if view.error:
        return {}
    held: dict[str, int] = {}
    for device in view.devices:
        mine = [used for pid, used in device.compute.items() if pid in pids]
        if mine and all(mine):
            held[device.uuid] = sum(mine)
    return held


def _uses_mps(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
    except OSError:
        return False
    return any(e.startswith(b"CUDA_MPS_PIPE_DIRECTORY=") for e in env) or os.path.exists(
        f"{MPS_PIPE_DEFAULT}/control"
    )


def memory_used(pids: tuple[int, ...]) -> int:
    """GPU memory the given processes hold now, as NVML reports it (0 without NVML):
    what a CUDA checkpoint will add to their host memory."""
    if not pids:
        return 0
    return sum(used for d in nvml.read().devices for pid, used in d.compute.items() if pid in pids)


def preflight(tree: ProcessTree) -> GpuRecord | None:
    """The GPU record to checkpoint ``tree`` with (None: no CUDA in it), or a refusal.

    Refuses, naming the pid and the fix: a pid mapping /dev/nvidia* with no
    CUDA context, a pid already locked or checkpointed on the GPU side (such a
    process has no /dev/nvidia* files left, so it would otherwise be dumped as
    a plain CPU process and never thawed), a driver without the checkpoint API
    (< r570), MPS clients, and GPUs in MIG mode.
    """
    if not cuda.available():
        users = [pid for pid in tree.pids if cuda.uses_nvidia_device(pid)]
        if users:
            raise GpuUnsupported(pid=users[0], name=comm(users[0]),
                                 reason="it uses /dev/nvidia* but libcuda here has no checkpoint API "
                                        f"(driver < r{cuda.MIN_DRIVER_BRANCH})", fix=cuda.UPGRADE)
        return None
    try:
        return _preflight_cuda(tree)
    except (cuda.CudaDriverError, cuda.CudaUnavailable) as exc:
        raise CudaFailed(action="inspection", pid=tree.root, reason=str(exc), rollback="") from exc


def _preflight_cuda(tree: ProcessTree) -> GpuRecord | None:
    orphans = cuda.nvidia_mapped_without_context(tree.pids)
    if orphans:
        pid = orphans[0]
        raise GpuUnsupported(
            pid=pid, name=comm(pid),
            reason="it maps /dev/nvidia* but holds no CUDA context (a child forked from a CUDA process "
                   "without exec, e.g. torch inductor's compile worker); CRIU cannot dump such mappings",
            fix="start the server with TORCHINDUCTOR_COMPILE_THREADS=1 (or end that child) before checkpointing",
        )
    stuck = cuda.frozen(tree.pids)
    if stuck:
        pid, state = stuck[0]
        raise GpuUnsupported(
            pid=pid, name=comm(pid), reason=f"its CUDA state is {state.name.lower()}, not running (frozen on the GPU "
                                            "side by another tool, or by a snapd operation that failed to undo it)",
            fix="bring it back first (cuCheckpointProcessRestore/Unlock, e.g. `cuda-checkpoint --toggle`); "
                "a restarted snapd does that for processes it froze",
        )
    holders = cuda.cuda_pids(tree.pids)
    if not holders:
        return None
    api = cuda.driver_version()
    if api < cuda.MIN_DRIVER_API:
        raise GpuUnsupported(pid=holders[0], name=comm(holders[0]),
                             reason=f"the driver's CUDA API version is {api}; checkpointing needs "
                                    f"r{cuda.MIN_DRIVER_BRANCH}+ ({cuda.MIN_DRIVER_API})", fix=cuda.UPGRADE)
    for pid in holders:
        if _uses_mps(pid):
            raise GpuUnsupported(pid=pid, name=comm(pid), reason="it is an MPS client",
                                 fix="run the server without MPS")
    view = nvml.read()
    devices = devices_of(view)
    mig = [d for d in devices if d.mig_enabled]
    if mig:
        raise GpuUnsupported(pid=holders[0], name=comm(holders[0]),
                             reason=f"GPU {mig[0].index} ({mig[0].uuid}) is in MIG mode",
                             fix="disable MIG mode (nvidia-smi -mig 0) for checkpointable servers")
    return GpuRecord(driver_version=view.driver_version, cuda_driver_api=api, devices=devices,
                     cuda_pids=tuple(holders), gpus_of=gpus_by_pid(view, tuple(holders)),
                     vram=vram_by_gpu(view, tuple(holders)))


class CudaFreeze:
    """Locks then checkpoints a set of CUDA processes; ``thaw`` brings back to
    running every process ``freeze`` touched, by the state the driver reports
    (a call that failed half-way may still have changed it). Thawing is idempotent."""

    def __init__(self, pids: tuple[int, ...], lock_timeout_ms: int) -> None:
        self.pids = pids
        self.lock_timeout_ms = lock_timeout_ms
        self.touched: list[int] = []

    def freeze(self) -> None:
        for pid in self.pids:
            self.touched.append(pid)
            began = time.monotonic()
            _cuda_call("lock", pid, lambda p=pid: cuda.lock(p, self.lock_timeout_ms))
            log.info("cuda.locked", pid=pid, seconds=round(time.monotonic() - began, 3))
        for pid in self.pids:
            began = time.monotonic()
            _cuda_call("checkpoint", pid, lambda p=pid: cuda.checkpoint(p))
            log.info("cuda.checkpointed", pid=pid, seconds=round(time.monotonic() - began, 3))

    def thaw(self) -> list[str]:
        """Thaw the touched processes, in reverse order; returns the problems met."""
        problems = []
        for pid in reversed(self.touched):
            try:
                cuda.thaw(pid)
            except (cuda.CudaDriverError, cuda.CudaUnavailable, cuda.CudaStuck) as exc:
                problems.append(str(exc))
                log.error("cuda.thaw_failed", pid=pid, error=str(exc))
        return problems


def _cuda_call(action: str, pid: int, fn: Callable[[], None]) -> None:
    try:
        fn()
    except (cuda.CudaDriverError, cuda.CudaUnavailable) as exc:
        raise CudaFailed(action=action, pid=pid, reason=str(exc), rollback="") from exc


def pairs_for(record: GpuRecord, targets: dict[str, GpuDevice],
              uuid_map: dict[str, str]) -> dict[int, list[tuple[bytes, bytes]]]:
    """The driver's GPU pairs per CUDA pid for ``targets`` ({} when nothing moves and no map
    was given). When any GPU moves, each pid gets a pair for every GPU it used: the driver
    wants the array to name every GPU the process checkpointed."""
    if not uuid_map and all(old == new.uuid for old, new in targets.items()):
        return {}
    every = tuple(targets)
    return {pid: [(cuda.gpu_uuid_bytes(old), cuda.gpu_uuid_bytes(targets[old].uuid))
                  for old in (record.gpus_of.get(pid) or every)]
            for pid in record.cuda_pids}


def resume_restored(pids: tuple[int, ...], pairs: dict[int, list[tuple[bytes, bytes]]]) -> None:
    """Restore (VRAM back to the GPU, onto ``pairs[pid]`` when given) then unlock
    every CUDA process of a restored tree (host pids: the driver takes the caller's)."""
    for pid in pids:
        _cuda_call("restore", pid, lambda p=pid: cuda.restore(p, pairs.get(p) or None))
    for pid in pids:
        _cuda_call("unlock", pid, lambda p=pid: cuda.unlock(p))
