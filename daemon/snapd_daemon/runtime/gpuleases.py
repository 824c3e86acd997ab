"""GPU memory reserved by restores in flight, so that concurrent restores never both take the
last room of a GPU (or, under the exclusive policy, the same idle GPU).

A restored process shows up in NVML (as a user of its GPU, its memory taken)
only once the driver has restored it, seconds after its GPU was chosen.
Between the two, what the restore will take is reserved here: each choice
(``host.gpuplace.place``) is made under one lock from NVML's inventory read
then and the reservations held then, and the reservation ends with the
restore, success or failure (NVML shows the restored tree's real use by then).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import structlog

from snapd_daemon.host import gpu, gpuplace, nvml
from snapd_daemon.host.gpuplace import GpuNow, Holder, Policy, Reservation
from snapd_daemon.host.processes import comm

log = structlog.get_logger()
Inventory = Callable[[], tuple[str, tuple[GpuNow, ...]]]


def host_gpus() -> tuple[str, tuple[GpuNow, ...]]:
    """(driver version, every GPU with its free memory and the processes holding memory on it), from NVML."""
    view = nvml.read()
    return view.driver_version, tuple(
        GpuNow(device, d.free_bytes, tuple(Holder(pid, comm(pid), used) for pid, used in sorted(d.compute.items())))
        for device, d in zip(gpu.devices_of(view), view.devices, strict=True))

class GpuLeases:
    def __init__(self, inventory: Inventory = host_gpus) -> None:
        self._inventory = inventory
        self._lock = threading.Lock()
        self._held: dict[str, tuple[Reservation, ...]] = {}  # operation id -> what it reserved

    @contextmanager
    def lease(self, operation_id: str, snapshot_id: str, record: gpu.GpuRecord, uuid_map: dict[str, str],
              policy: Policy) -> Iterator[tuple[dict[int, list[tuple[bytes, bytes]]], dict[str, str]]]:
        """Choose the GPUs for a restore of ``record``'s processes and reserve what it takes there for
        the block; yields (driver pairs per CUDA pid as recorded, snapshot GPU UUID -> chosen GPU UUID)."""
        with self._lock:
            version, gpus = self._inventory()
            held = tuple(r for rs in self._held.values() for r in rs)
            placement = gpuplace.place(snapshot_id, record, version, gpus, held, policy, uuid_map)
            reserved = placement.reserve
            self._held[operation_id] = tuple(Reservation(operation_id, uuid, n) for uuid, n in reserved.items())
        try:
            chosen = {old: new.uuid for old, new in placement.targets.items()}
            log.info("restore.gpus_placed", policy=policy.mode, gpus=chosen, reserved=reserved)
            yield gpu.pairs_for(record, placement.targets, uuid_map), chosen
        finally:
            with self._lock:
                self._held.pop(operation_id, None)
