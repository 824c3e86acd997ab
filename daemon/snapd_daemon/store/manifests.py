"""Manifests as the store sees them: opaque bytes under an id.

``manifests/<id>.json``, each written whole (tmp, fsync, rename, fsync dir),
so a reader sees a manifest complete or not at all. What a manifest says is
not the store's business (``snapshots/`` parses them); the store only keeps
them next to the chunks they name.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from snapd_daemon.util.fsutil import fsync_path, remove_temporaries, write_atomic

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class ManifestDir:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, manifest_id: str) -> Path:
        if not _ID_RE.fullmatch(manifest_id):
            raise ValueError(f"not a manifest id: {manifest_id!r}")
        return self.root / f"{manifest_id}.json"

    def put(self, manifest_id: str, data: bytes) -> None:
        write_atomic(self.path(manifest_id), data)

    def remove(self, manifest_id: str) -> None:
        self.path(manifest_id).unlink()
        fsync_path(self.root)

    def all(self) -> Iterator[tuple[Path, bytes]]:
        """Every manifest file and its bytes (temporaries of a crashed write excluded)."""
        for path in sorted(self.root.glob("*.json")):
            if not path.name.startswith("."):
                yield path, path.read_bytes()

    def remove_temporaries(self) -> None:
        remove_temporaries(self.root)


class PinSet:
    """``pins/<id>``: ids that gc and rm leave alone."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def __contains__(self, manifest_id: str) -> bool:
        return (self.root / manifest_id).exists()

    def set(self, manifest_id: str, pinned: bool) -> None:
        path = self.root / manifest_id
        if pinned:
            write_atomic(path, b"")
        else:
            path.unlink(missing_ok=True)
            fsync_path(self.root)

    def remove_temporaries(self) -> None:
        remove_temporaries(self.root)
