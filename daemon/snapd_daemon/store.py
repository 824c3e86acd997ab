"""Snapshot storage: one directory per snapshot, made visible atomically.

Layout under the state directory::

    staging/<operation>/   a checkpoint in progress (never listed)
    snapshots/<id>/        complete snapshots: images/, manifest.json, criu logs
    trash/<id>/            snapshots being deleted

A snapshot becomes visible by one rename of its finished staging directory,
after every image file, the images directory and the manifest were fsynced.
Whatever a crash leaves in staging/ or trash/ is removed by ``recover``.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from snapd_daemon.errors import SnapshotNotFound, StoreError, StoreFull
from snapd_daemon.fsutil import fsync_path, tree_size, write_atomic
from snapd_daemon.manifest import ImageEntry, Manifest

MANIFEST = "manifest.json"
HOLD = "hold.json"


@dataclass(frozen=True)
class Staging:
    """A private directory for one checkpoint: CRIU writes into ``images``, logs into ``work``."""

    root: Path

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def work(self) -> Path:
        return self.root / "work"

    def record_hold(self, processes: list[dict[str, float]]) -> None:
        """Remember processes snapd stopped, so a restarted daemon can resume them."""
        write_atomic(self.root / HOLD, json.dumps(processes).encode())


class DirectoryStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.staging_dir = root / "staging"
        self.snapshots_dir = root / "snapshots"
        self.trash_dir = root / "trash"
        for d in (self.staging_dir, self.snapshots_dir, self.trash_dir):
            d.mkdir(parents=True, exist_ok=True)

    def recover(self) -> list[list[dict[str, float]]]:
        """Remove what a crash left behind; return the process holds found in staging.

        Must run before the daemon accepts requests.
        """
        holds = []
        for leftover in sorted(self.staging_dir.iterdir()):
            hold = leftover / HOLD
            if hold.exists():
                holds.append(json.loads(hold.read_text()))
            shutil.rmtree(leftover, ignore_errors=True)
        for leftover in self.trash_dir.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)
        return holds

    def new_staging(self, operation_id: str) -> Staging:
        staging = Staging(self.staging_dir / operation_id)
        staging.images.mkdir(parents=True)
        staging.work.mkdir()
        return staging

    def discard(self, staging: Staging) -> None:
        shutil.rmtree(staging.root, ignore_errors=True)

    def commit(self, staging: Staging, manifest: Manifest) -> Manifest:
        """Make ``staging`` durable and visible as snapshot ``manifest.id``; fills in file sizes."""
        with self.translate_os_errors(needed=0):
            files = []
            for path in sorted(staging.images.iterdir()):
                fsync_path(path)
                files.append(ImageEntry(name=path.name, size_bytes=path.stat().st_size))
            fsync_path(staging.images)
            manifest.files = files
            manifest.stored_bytes = tree_size(staging.images)
            write_atomic(staging.root / MANIFEST, manifest.to_json().encode())
            (staging.root / HOLD).unlink(missing_ok=True)
            os.rename(staging.root, self.snapshots_dir / manifest.id)
            fsync_path(self.snapshots_dir)
        return manifest

    @contextmanager
    def translate_os_errors(self, needed: int) -> Iterator[None]:
        """Turn ENOSPC/EDQUOT into StoreFull and other OS errors into StoreError."""
        try:
            yield
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise self.full(needed) from exc
            raise StoreError(path=self.root, reason=str(exc)) from exc

    def full(self, needed: int) -> StoreFull:
        return StoreFull(path=self.root, needed=needed, free=self.free_bytes())

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def list(self, name: str = "") -> list[Manifest]:
        """Complete snapshots, oldest first; only those named ``name`` if given."""
        found = []
        for d in self.snapshots_dir.iterdir():
            try:
                m = Manifest.from_json((d / MANIFEST).read_text())
            except FileNotFoundError:
                continue
            if not name or m.name == name:
                found.append(m)
        return sorted(found, key=lambda m: (m.created, m.id))

    def get(self, ref: str) -> Manifest:
        """A snapshot by id, else the newest snapshot named ``ref``."""
        path = self.snapshots_dir / ref / MANIFEST
        if "/" not in ref and ref not in ("", ".", "..") and path.exists():
            return Manifest.from_json(path.read_text())
        named = self.list(name=ref) if ref else []
        if not named:
            raise SnapshotNotFound(snapshot=ref)
        return named[-1]

    def images_dir(self, manifest: Manifest) -> Path:
        return self.snapshots_dir / manifest.id / "images"

    def delete(self, manifest: Manifest) -> int:
        """Remove a snapshot (invisible at once, bytes freed after); returns bytes freed."""
        src = self.snapshots_dir / manifest.id
        dst = self.trash_dir / manifest.id
        try:
            os.rename(src, dst)
        except FileNotFoundError as exc:
            raise SnapshotNotFound(snapshot=manifest.id) from exc
        fsync_path(self.snapshots_dir)
        freed = tree_size(dst)
        shutil.rmtree(dst)
        return freed
