"""What the remote-tier tests share: two daemons on separate state directories standing for
two hosts that use one bucket, and looks into the bucket and the local stores."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import obstore

from harness import Daemon
from s3server import ACCESS_KEY, SECRET_KEY, S3Server


def credentials_file(path: Path, secret: str = SECRET_KEY) -> Path:
    path.write_text(f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {secret}\n")
    return path


def remote_args(tmp: Path, s3: S3Server, prefix: str, secret: str = SECRET_KEY, **extra: str) -> tuple[str, ...]:
    creds = credentials_file(tmp / f"credentials-{secret}", secret)
    return (*s3.daemon_args(prefix, **extra), "--remote-credentials-file", str(creds))


@contextmanager
def two_hosts(tmp: Path, s3: S3Server, prefix: str, *extra: str) -> Iterator[tuple[Daemon, Daemon]]:
    """Daemons "a" and "b", each with its own state directory, both on ``prefix`` of the bucket."""
    hosts = []
    try:
        for name in ("a", "b"):
            root = tmp / name
            root.mkdir()
            hosts.append(Daemon(root, remote_args(tmp, s3, prefix) + extra).start())
        yield hosts[0], hosts[1]
    finally:
        for d in hosts:
            d.close()


def bucket_objects(s3: S3Server, prefix: str, under: str = "") -> dict[str, int]:
    """Key (below ``prefix``) -> size of every object under ``under``."""
    store = s3.store(prefix)
    return {str(m["path"]): int(m["size"]) for batch in obstore.list(store, under or None) for m in batch}


def chunk_objects(s3: S3Server, prefix: str) -> dict[str, int]:
    """Chunk id -> size of every chunk in the bucket under ``prefix``."""
    return {key.rsplit("/", 1)[-1]: size for key, size in bucket_objects(s3, prefix, "chunks/").items()}


def manifest_chunks(daemon: Daemon, snapshot_id: str) -> set[str]:
    """The chunks a snapshot of the daemon's local store references."""
    data = json.loads((daemon.state_dir / "manifests" / f"{snapshot_id}.json").read_text())
    return {c["id"] for f in data["files"] for c in f["chunks"] if c["id"]}


def whole_read_chunks(daemon: Daemon, snapshot_id: str) -> set[str]:
    """The chunks of the images every restore of the snapshot writes out whole: all but the
    originals that a stored trimmed copy (``trimmed/...``) replaces. Of those originals a
    restore that uses the stored cut reads only the spans it injects into memory, so a chunk
    of them that holds only small regions (CRIU gets those from the trimmed copy) is never
    read by it."""
    data = json.loads((daemon.state_dir / "manifests" / f"{snapshot_id}.json").read_text())
    replaced = {f["name"].removeprefix("trimmed/") for f in data["files"] if f["name"].startswith("trimmed/")}
    return {c["id"] for f in data["files"] if f["name"] not in replaced for c in f["chunks"] if c["id"]}


def local_chunk_temporaries(daemon: Daemon) -> list[Path]:
    return [p for p in (daemon.state_dir / "chunks").rglob("*") if ".tmp-" in p.name]
