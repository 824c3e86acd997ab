"""Quarantine: chunk files that failed their hash and manifests that failed their seal, put aside.

Layout under ``<state_dir>/quarantine``::

    chunks/<blake3>           a chunk file that failed its hash, moved here whole (rename)
    chunks/<blake3>.missing   empty marker: a chunk was read and its file was gone
    manifests/<file>          a manifest file that failed its seal or did not parse, moved here whole
    manifests/<file>.error    what was wrong with it

Invariants:
- a chunk is damaged while it has an entry here and no file under ``chunks/``:
  an ingest that produces the same content no longer finds a file to dedupe
  against, stores it anew, and so repairs every snapshot using it, with
  nothing here to update;
- nothing here is ever read back into the store; entries are evidence, which
  gc removes once their chunk is stored anew or no snapshot references it;
- the store's moves are renames within the state directory's file system, so
  a bad file is in one place at a time.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from snapd_daemon.util.fsutil import fsync_path, remove_temporaries, write_atomic

_CHUNK_ID = re.compile(r"\b[0-9a-f]{64}\b")
_MISSING = ".missing"
_ERROR = ".error"


class Quarantine:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.chunks_dir = root / "chunks"
        self.manifests_dir = root / "manifests"
        self.chunks_dir.mkdir(parents=True, exist_ok=True)
        self.manifests_dir.mkdir(exist_ok=True)

    def chunk_path(self, cid: str) -> Path:
        """Where the bad file of chunk ``cid`` goes (the caller moves it, then calls ``sync``)."""
        return self.chunks_dir / cid

    def holds_file(self, cid: str) -> bool:
        return self.chunk_path(cid).exists()

    def mark_missing(self, cid: str) -> bool:
        """Record that chunk ``cid`` was gone; False when it had an entry already."""
        marker = self.chunks_dir / f"{cid}{_MISSING}"
        if marker.exists():
            return False
        write_atomic(marker, b"")
        return True

    def sync(self) -> None:
        fsync_path(self.chunks_dir)

    def chunk_ids(self) -> set[str]:
        """Every chunk with an entry here, its file or its marker."""
        return {name.removesuffix(_MISSING) for name in os.listdir(self.chunks_dir) if not name.startswith(".")}

    def forget(self, cids: set[str]) -> None:
        """Remove the entries of these chunks."""
        for cid in cids:
            self.chunk_path(cid).unlink(missing_ok=True)
            (self.chunks_dir / f"{cid}{_MISSING}").unlink(missing_ok=True)
        if cids:
            self.sync()

    def put_manifest(self, path: Path, error: str) -> Path:
        """Move manifest file ``path`` here with ``error`` beside it; where it went."""
        dest = self.manifests_dir / path.name
        write_atomic(dest.with_name(dest.name + _ERROR), error.encode())
        os.rename(path, dest)
        fsync_path(self.manifests_dir)
        fsync_path(path.parent)
        return dest

    def manifest_refs(self) -> set[str]:
        """Every chunk id written in a quarantined manifest, read as text (it did not parse):
        gc keeps those chunks until an operator repairs or deletes the manifest."""
        found: set[str] = set()
        for path in self.manifests_dir.iterdir():
            if not path.name.startswith(".") and not path.name.endswith(_ERROR):
                found |= set(_CHUNK_ID.findall(path.read_text(errors="replace")))
        return found

    def manifest_count(self) -> int:
        return len(self.manifests())

    def manifests(self) -> dict[str, str]:
        """File name -> what was wrong, for every manifest here."""
        found = {}
        for name in os.listdir(self.manifests_dir):
            if not name.startswith(".") and not name.endswith(_ERROR):
                try:
                    found[name] = (self.manifests_dir / f"{name}{_ERROR}").read_text(errors="replace")
                except FileNotFoundError:
                    found[name] = "(no reason recorded)"
        return found

    def remove_temporaries(self) -> None:
        remove_temporaries(self.chunks_dir)
        remove_temporaries(self.manifests_dir)
