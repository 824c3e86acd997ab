"""GPUs chosen by restores in flight, so that concurrent restores never pick the same one.

A restored process shows up as a user of its GPU (NVML) only once the driver has
restored it, seconds after its GPU was chosen. Between the two the GPU is
leased here: the choice (``host.gpu.plan_targets``) counts a GPU as busy when
NVML lists a process on it or a restore in flight has leased it, and the lease
ends with the restore, success or failure.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from snapd_daemon.host import gpu


class GpuLeases:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, str] = {}  # GPU UUID -> operation id

    @contextmanager
    def lease(self, operation_id: str, snapshot_id: str, record: gpu.GpuRecord,
              uuid_map: dict[str, str]) -> Iterator[tuple[dict[int, list[tuple[bytes, bytes]]], dict[str, str]]]:
        """Choose the GPUs for a restore of ``record``'s processes and hold them for the block;
        yields (driver pairs per CUDA pid as recorded, snapshot GPU UUID -> chosen GPU UUID)."""
        with self._lock:
            version, devices = gpu.inventory()
            busy = {uuid: f"pids {pids}" for uuid, pids in gpu.busy_gpus().items()}
            busy.update({uuid: f"being restored onto by {op}" for uuid, op in self._held.items()})
            targets = gpu.plan_targets(snapshot_id, record, version, devices, uuid_map, busy)
            chosen = [t.uuid for t in targets.values()]
            self._held.update(dict.fromkeys(chosen, operation_id))
        try:
            yield gpu.pairs_for(record, targets, uuid_map), {old: new.uuid for old, new in targets.items()}
        finally:
            with self._lock:
                for uuid in chosen:
                    self._held.pop(uuid, None)
