"""The remote tier's parts against a real S3 server, without a daemon: the fetcher serves a
waiting reader first, a pull's import publishes whole or not at all, locks exclude gc."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from s3server import ACCESS_KEY, SECRET_KEY, S3Server
from snapd_daemon.errors import RemoteBusy, RemoteObjectBad
from snapd_daemon.remote.fetch import Fetcher
from snapd_daemon.store import codec
from snapd_daemon.store.local import LocalStore
from snapd_daemon.store.remote import RemoteStore
from snapd_daemon.store.s3 import RemoteConfig
from snapd_daemon.util.buffers import ReadBuffers


def _remote(s3: S3Server, prefix: str, threads: int = 4, credentials: Path | None = None) -> RemoteStore:
    return RemoteStore(RemoteConfig(endpoint=s3.endpoint, bucket="snapd-test", prefix=prefix, threads=threads,
                                    retries=1, credentials_file=credentials, allow_plaintext=True))


def _credentials(tmp_path: Path) -> Path:
    path = tmp_path / "credentials"
    path.write_text(f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n")
    return path


def _upload(remote: RemoteStore, n: int, size: int = 256 << 10) -> list[tuple[str, int]]:
    chunks = []
    for _ in range(n):
        raw = os.urandom(size)
        cid = codec.chunk_id(raw)
        assert remote.put_chunk(cid, b"".join(bytes(part) for part in codec.encode(raw)))
        chunks.append((cid, size))
    return chunks


def test_a_waiting_reader_is_served_before_the_queue(tmp_path: Path, s3: S3Server) -> None:
    remote = _remote(s3, "fetch-order", threads=1, credentials=_credentials(tmp_path))
    chunks = _upload(remote, 48)
    store = LocalStore(tmp_path / "state", 2)
    with store.begin_import() as imported:
        fetcher = Fetcher(remote, imported, chunks, "snapshot test", None, fresh_limit=1 << 20)
        with fetcher:
            last = chunks[-1][0]
            fresh = fetcher.wait(last)
            # one worker: besides the chunk it had started, the wanted one came next
            assert fetcher.fetched_chunks < len(chunks) // 2
            # the first reader gets the verified bytes; a later one reads the staged copy
            assert fresh is not None and codec.chunk_id(fresh) == last and fetcher.wait(last) is None
            assert codec.chunk_id(imported.read(last, ReadBuffers())) == last
            fetcher.join()
        assert fetcher.fetched_chunks == len(chunks) and fetcher.raw_done == fetcher.raw_total
        assert not list((tmp_path / "state" / "manifests").iterdir())  # nothing published before commit
    assert not [p for p in (tmp_path / "state" / "chunks").rglob("*") if p.is_file()]  # abort removed all


def test_a_corrupt_object_fails_every_waiter_and_stages_nothing(tmp_path: Path, s3: S3Server) -> None:
    remote = _remote(s3, "fetch-corrupt", credentials=_credentials(tmp_path))
    chunks = _upload(remote, 8)
    bad = chunks[3][0]
    remote.bucket.put(remote.chunk_key(bad, None), b"SNC1 this is not the chunk")
    store = LocalStore(tmp_path / "state", 2)
    named = f"fetch-corrupt/chunks/{bad[:2]}/{bad}"
    with store.begin_import() as imported, pytest.raises(RemoteObjectBad, match=named):
        with Fetcher(remote, imported, chunks, "snapshot test", None) as fetcher:
            fetcher.wait(chunks[-1][0])
            fetcher.join()
    assert not [p for p in (tmp_path / "state" / "chunks").rglob("*") if p.is_file()]


def test_gc_lock_excludes_pushes_and_the_other_way_round(tmp_path: Path, s3: S3Server) -> None:
    remote = _remote(s3, "locks", credentials=_credentials(tmp_path))
    with remote.lock("push"), remote.lock("push"):  # pushes share
        with pytest.raises(RemoteBusy, match="a push holds lock .*locks/locks/push-"):
            remote.lock("gc").__enter__()
    with remote.lock("gc"):
        push = remote.lock("push")
        push.wait = 0.5
        with pytest.raises(RemoteBusy, match="a garbage collection holds lock"):
            push.__enter__()
        with pytest.raises(RemoteBusy):
            remote.lock("gc").__enter__()
    assert remote.locks() == []  # every lock taken was released, every refused one removed
