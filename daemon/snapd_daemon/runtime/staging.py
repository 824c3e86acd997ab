"""Staging: a private directory per operation for CRIU's images and logs, in RAM when it has room.

CRIU writes a dump once into staging and snapd reads it once to chunk it; on
tmpfs that round trip never touches the disk, which then only receives the
compressed, deduplicated chunks. A restore writes its (trimmed) images there
for CRIU. Staging directories are never listed; ``recover`` removes what a
crash left, and each operation discards its own when it ends.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from snapd_daemon.errors import StoreError, StoreFull
from snapd_daemon.store import oserrors
from snapd_daemon.util.meminfo import mem_available


@dataclass(frozen=True)
class Staging:
    """A private directory for one operation: CRIU images in ``images``, logs in ``work``."""

    root: Path

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def work(self) -> Path:
        return self.root / "work"


@dataclass(frozen=True)
class Scratch:
    """Where staging directories go: RAM (tmpfs) when it has room, else the state disk.
    ``mode`` is "auto", "ram" or "disk"."""

    disk: Path
    ram: Path | None
    mode: str = "auto"
    # RAM staging needs this multiple of the expected size free, in tmpfs and MemAvailable.
    headroom: float = 1.5

    def roots(self) -> list[Path]:
        return [p for p in (self.disk, self.ram) if p is not None]

    def in_ram(self, staging: Staging) -> bool:
        return self.ram is not None and staging.root.is_relative_to(self.ram)

    def choose(self, needed: int, ram_besides: int = 0) -> Path:
        """RAM or disk for ``needed`` bytes of images; ``ram_besides``: RAM the operation
        will take on top of them, not available yet (a CUDA checkpoint's host copy of VRAM)."""
        if self.ram is None or self.mode == "disk":
            return self.disk
        if self.mode == "ram":
            return self.ram
        self.ram.mkdir(parents=True, exist_ok=True)
        room = min(shutil.disk_usage(self.ram).free, mem_available() - ram_besides)
        return self.ram if room >= needed * self.headroom + (1 << 30) else self.disk

    def recover(self) -> None:
        """Create the roots; remove every staging directory a crash left. Before serving."""
        for root in self.roots():
            root.mkdir(parents=True, exist_ok=True)
            for leftover in sorted(root.iterdir()):
                shutil.rmtree(leftover, ignore_errors=True)

    def new(self, operation_id: str, needed: int, ram_besides: int = 0) -> Staging:
        """A fresh staging directory for ``needed`` bytes of images; StoreFull when there is no room."""
        staging = Staging(self.choose(needed, ram_besides) / operation_id)
        try:
            staging.images.mkdir(parents=True)
            staging.work.mkdir()
        except OSError as exc:
            shutil.rmtree(staging.root, ignore_errors=True)
            raise (oserrors.full(exc, staging.root.parent, needed)
                   or StoreError(path=staging.root, reason=oserrors.describe(exc))) from exc
        return staging

    def full(self, staging: Staging, needed: int) -> StoreFull | None:
        """A StoreFull error if the staging file system has (nearly) no space left."""
        free = oserrors.free_bytes(staging.root)
        return StoreFull(path=staging.root.parent, needed=needed, free=free) if free < 4 << 20 else None

    @staticmethod
    def discard(staging: Staging) -> None:
        """Remove a staging directory in the background (gigabytes of tmpfs take a
        noticeable time to free; nobody waits for it). A crash meanwhile leaves it
        to ``recover``."""
        threading.Thread(target=shutil.rmtree, args=(staging.root, True), name="discard", daemon=True).start()

    def release(self) -> None:
        """Remove the (empty) RAM staging directory when the daemon stops, and the daemon's RAM
        directory and the shared one above it when nothing else is left in them (the hot
        tier's snapshots stay)."""
        if self.ram is not None:
            with contextlib.suppress(OSError):
                self.ram.rmdir()
                self.ram.parent.rmdir()
                self.ram.parent.parent.rmdir()
