"""Write-once chunk files under ``chunks/<first two hex digits>/<blake3 hex>``."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

from snapd_daemon.cas import chunkfile
from snapd_daemon.fsutil import fsync_path

_TMP_MARK = ".tmp-"


class ChunkStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, cid: str) -> Path:
        return self.root / cid[:2] / cid

    def exists(self, cid: str) -> int:
        """Stored size of chunk ``cid``, or 0 if the store lacks it."""
        try:
            return os.stat(self.path(cid)).st_size
        except FileNotFoundError:
            return 0

    def put(self, cid: str, blob: bytes) -> bool:
        """Store ``blob`` as chunk ``cid`` durably (tmp, fsync, link); False if it already existed.

        The caller fsyncs the chunk's directory (``sync_dirs``) before it
        publishes anything that refers to the chunk.
        """
        final = self.path(cid)
        final.parent.mkdir(exist_ok=True)
        tmp = final.with_name(f"{cid}{_TMP_MARK}{os.getpid()}-{threading.get_ident()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(blob)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, final)  # fails if another writer stored the same chunk first
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def read(self, cid: str) -> bytes:
        """Verified raw bytes of chunk ``cid``. Raises FileNotFoundError or ChunkDecodeError."""
        with open(self.path(cid), "rb") as f:
            return chunkfile.decode(f.read(), cid)

    def sync_dirs(self, cids: set[str]) -> None:
        for prefix in {c[:2] for c in cids}:
            fsync_path(self.root / prefix)
        fsync_path(self.root)

    def all(self) -> Iterator[tuple[str, int]]:
        """Every stored chunk and its size (temporary files excluded)."""
        for sub in self.root.iterdir():
            for entry in os.scandir(sub):
                if _TMP_MARK not in entry.name:
                    yield entry.name, entry.stat().st_size

    def remove(self, cid: str) -> None:
        self.path(cid).unlink(missing_ok=True)

    def remove_temporaries(self) -> int:
        """Delete temporary files a crashed writer left; returns how many."""
        count = 0
        for sub in self.root.iterdir():
            for entry in os.scandir(sub):
                if _TMP_MARK in entry.name:
                    os.unlink(entry.path)
                    count += 1
        return count
