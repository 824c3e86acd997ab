"""The daemon's settings (what `snapd serve` was told) and the Runtime every operation gets."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from snapd_daemon.criu.binary import Criu
from snapd_daemon.host.cgroups import CgroupRoot
from snapd_daemon.host.gpuplace import SHARED, Margin
from snapd_daemon.runtime.events import EventBus
from snapd_daemon.runtime.gpuleases import GpuLeases
from snapd_daemon.runtime.holds import HoldJournal
from snapd_daemon.runtime.instances import InstanceTable
from snapd_daemon.runtime.registry import OperationRegistry
from snapd_daemon.runtime.staging import Scratch
from snapd_daemon.snapshots.catalog import Catalog
from snapd_daemon.snapshots.signing import FleetKeys
from snapd_daemon.store.protocol import ChunkStore
from snapd_daemon.store.remote import RemoteStore
from snapd_daemon.store.s3 import RemoteConfig


@dataclass(frozen=True)
class Settings:
    state_dir: Path = Path("/var/lib/gpu-snapd")
    criu_path: str | None = None
    # CRIU log verbosity (0..4); 4 keeps enough context to explain failures.
    criu_log_level: int = 4
    # Seconds CRIU may take to freeze the tree at dump.
    freeze_timeout: int = 30
    # How long the CUDA driver may wait for in-flight GPU work when locking.
    cuda_lock_timeout_ms: int = 30_000
    # Default seconds a restore waits for exiting holders of the snapshot's pids.
    pid_wait_seconds: float = 10.0
    # Where CRIU's images are staged: "auto" (RAM when it has room), "ram" or "disk".
    scratch: str = "auto"
    # Delegated cgroup v2 subtree restores may be placed in (None: <cgroup2 mount>/gpu-snapd).
    cgroup_root: Path | None = None
    ram_scratch: Path | None = Path("/dev/shm/gpu-snapd")
    # Private anonymous regions at least this big are written into restored processes
    # by snapd (parallel process_vm_writev) instead of by CRIU (one serial loop); 0 turns
    # that off. 2 MiB: everything but the smallest mappings (Python's 1 MiB arenas, stacks)
    # goes the parallel way, and CRIU's part (and the image staged for it) stays small.
    inject_min_bytes: int = 2 << 20
    # Mark those regions MADV_HUGEPAGE in the image, so the writes land in huge pages.
    # Off: on the 2-core CI VM it made a 1 GiB injection 3x slower (huge-page faults
    # cost more there); FIELD-NOTES saw THP speed up injection and the driver's
    # host->GPU copy on the GPU host, where it is still to be measured.
    inject_huge_pages: bool = False
    # When a restore fills those regions after resuming the tree, through CRIU's lazy pages
    # (restore/postcopy.py), so that the CUDA restore overlaps the fill: "gpu" (snapshots with
    # GPU state, when CRIU reports uffd-noncoop), "always" (every snapshot), "never" (the default until
    # post-copy has restored a GPU snapshot on a GPU host: docs/restore-speed.md).
    restore_overlap: str = "never"
    # A restore step that blocks past this many seconds (the CUDA restore, the wait for a post-copy
    # fill) logs what the tree's threads wait on, and again every as long (runtime/slowphase.py); 0: never.
    slow_phase_seconds: float = 30.0
    # How the stopped tree's memory is written (restore/overlap.py): "writev" (process_vm_writev) or
    # "uffd" (UFFDIO_COPY through CRIU's lazy pages, the uffds closed before the resume; cheaper per
    # byte, docs/restore-speed.md). "writev" stays the default until "uffd" has restored a GPU snapshot.
    inject_method: str = "writev"
    # At most this many bytes of the file pages a tree had mapped in are recorded at
    # checkpoint and read ahead at restore (host/filepages.py); 0 turns that off.
    warm_file_bytes: int = 1 << 30
    # Where restored trees' outward stdout/stderr pipes are redirected (None: <state_dir>/logs).
    restore_log_dir: Path | None = None
    # A chunk whose compression saves less than this percentage of its size is stored raw,
    # so that restores copy it instead of decoding it (docs/restore-speed.md).
    store_raw_below: float = 5.0
    # Threads that hash, compress and write chunks (and read them back on restore).
    io_threads: int = field(default_factory=lambda: min(16, os.cpu_count() or 1))
    # Where a restore's GPUs go unless its request says: "shared" (a GPU with room for what the
    # snapshot's processes held there plus ``gpu_margin``) or "exclusive" (an idle GPU); host/gpuplace.py.
    gpu_policy: str = SHARED
    gpu_margin: Margin = field(default_factory=Margin)
    # This host must have a usable NVIDIA driver: `snapd status` fails its gpu-driver check without one.
    gpu_required: bool = False
    # The remote tier (an S3 bucket) snapshots are pushed to and pulled from (None: none).
    remote: RemoteConfig | None = None
    # The key push and export sign manifests with, the keys pull, on-demand restore and
    # import trust, and whether they refuse what no trusted key signed (snapshots/signing.py).
    fleet_keys: FleetKeys = field(default_factory=FleetKeys)
    # Records of ended (exited, stopped) instances kept: at most this many, the newest, and
    # none older than this many seconds (runtime/instances.py).
    keep_exited_instances: int = 100
    exited_instance_max_age: float = 24 * 3600.0

    def ram_dir(self) -> Path | None:
        """This daemon's directory in RAM, keyed by the state directory so that daemons
        with different state directories never touch each other's files."""
        if self.ram_scratch is None:
            return None
        return self.ram_scratch / hashlib.sha256(str(self.state_dir.resolve()).encode()).hexdigest()[:16]

    def scratch_dirs(self) -> tuple[Path, Path | None]:
        """(disk, RAM) staging roots."""
        ram = self.ram_dir()
        return self.state_dir / "staging", ram / "staging" if ram else None

    def log_dir(self) -> Path:
        return self.restore_log_dir or self.state_dir / "logs"

    def instances_dir(self) -> Path:
        return self.state_dir / "instances"

    def criu_log_dir(self) -> Path:
        """Where the CRIU logs of failed operations are kept (runtime/criulogs.py)."""
        return self.state_dir / "criu-logs"

    def hot_dir(self) -> Path | None:
        """Where prefetched snapshots keep decompressed chunks (RAM)."""
        ram = self.ram_dir()
        return ram / "hot" if ram else None


@dataclass
class Runtime:
    settings: Settings
    criu: Criu
    store: ChunkStore
    catalog: Catalog
    scratch: Scratch
    cgroups: CgroupRoot
    journal: HoldJournal
    # operation phases and instance state changes, numbered (events.py)
    events: EventBus
    instances: InstanceTable
    # the remote tier, when one is configured
    remote: RemoteStore | None = None
    registry: OperationRegistry = field(init=False)
    gpu_leases: GpuLeases = field(default_factory=GpuLeases)
    # operations of an earlier daemon process that this start rolled back
    recovered_operations: int = 0
    daemon_pid: int = field(default_factory=os.getpid)

    def __post_init__(self) -> None:
        self.registry = OperationRegistry(self.events)
