"""The remote tier: the same chunks and manifests as the local store, in an S3 bucket.

Layout under the configured prefix::

    chunks/ab/<name>          a chunk as the local store keeps it (codec.py), sealed
    manifests/<id>.json       one per complete snapshot, sealed, written last and only if absent
    locks/<kind>-<token>.json who pushes or collects garbage now (RemoteLock), plaintext

Objects are sealed (envelope.py): a chunk's name is a keyed hash of its id
under the fleet key that sealed it (plaintext: the id itself), so every host
holding that key names it alike; puts are conditional (If-None-Match) so an
existing object is never rewritten. Chunks of one manifest are named under the
key that sealed the manifest. Every object read is opened (authenticated) and a
chunk verified against its id before its bytes are used: an object that fails
authentication raises RemoteUndecryptable, one sealed with a key this host lacks
RemoteKeyMissing, a chunk whose opened bytes are bad RemoteObjectBad, each
naming it. Like the local store, this module knows chunks and bytes, never what
a manifest says.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from datetime import datetime, timedelta

import structlog

from snapd_daemon.errors import RemoteBusy, RemoteKeyMissing, RemoteMissing, RemoteObjectBad, RemoteUndecryptable
from snapd_daemon.store import codec, envelope
from snapd_daemon.store.envelope import Envelope
from snapd_daemon.store.s3 import Bucket, RemoteConfig
from snapd_daemon.util.poller import Poller

log = structlog.get_logger()
CHUNKS = "chunks/"
MANIFESTS = "manifests/"
LOCKS = "locks/"
# A lock not refreshed for this long belongs to a host that died: it is ignored (and gc removes it).
LOCK_STALE = timedelta(minutes=10)
LOCK_REFRESH_SECONDS = 60.0


class RemoteStore:
    def __init__(self, cfg: RemoteConfig) -> None:
        """ConfigInvalid when the key files are bad or neither a key nor plaintext is configured."""
        self.cfg = cfg
        self.envelope = Envelope.load(cfg.encryption_key, cfg.read_keys, cfg.allow_plaintext)
        self.bucket = Bucket(cfg)

    # -- chunks ---------------------------------------------------------------

    def chunk_key(self, cid: str, key_id: str | None) -> str:
        """The object key of chunk ``cid`` sealed with ``key_id`` (Envelope.chunk_name)."""
        return _chunk_key(self.envelope.chunk_name(cid, key_id))

    def has_chunk(self, cid: str) -> bool:
        """Whether the bucket has chunk ``cid`` as this host writes it (under the write key)."""
        return self.bucket.head(self.chunk_key(cid, self.envelope.write_key_id)) is not None

    def put_chunk(self, cid: str, blob: bytes | memoryview) -> bool:
        """Upload a chunk in its stored form, sealed, unless the bucket has it; True when this call wrote it."""
        return self.bucket.put(self.chunk_key(cid, self.envelope.write_key_id),
                               self.envelope.seal(envelope.CHUNK, cid, blob), only_if_absent=True)

    def get_chunk(self, cid: str, what: str, key_id: str | None) -> tuple[bytes | memoryview, bytes | memoryview]:
        """(stored form, raw bytes) of a chunk sealed with ``key_id`` (that of the manifest naming
        it), opened and verified against its id; ``what`` names the snapshot it is needed for,
        in the error when it is missing."""
        key = self.chunk_key(cid, key_id)
        try:
            sealed = self.bucket.get(key)
        except KeyError:
            raise RemoteMissing(endpoint=self.cfg.endpoint, bucket=self.cfg.bucket, what=f"chunk {cid} of {what}",
                                key=self.bucket.full_key(key),
                                hint="; the remote copy is incomplete: push the snapshot again") from None
        blob, _ = self._open(key, envelope.CHUNK, cid, sealed)
        try:
            return blob, codec.decode(blob, cid)
        except codec.ChunkDecodeError as exc:
            raise RemoteObjectBad(key=self.bucket.full_key(key), bucket=self.cfg.bucket,
                                  problem=f"corrupt or truncated ({len(blob)} bytes: {exc})") from None

    def chunks(self) -> list[tuple[str, int, datetime]]:
        """(object name, size, last modified) of every chunk in the bucket."""
        return [(key.rsplit("/", 1)[-1], size, mtime) for key, size, mtime in self.bucket.list(CHUNKS)]

    def delete_chunks(self, names: list[str]) -> None:
        """Remove chunks by object name (``chunks``)."""
        self.bucket.delete([_chunk_key(name) for name in names])

    # -- manifests ------------------------------------------------------------

    @staticmethod
    def manifest_key(manifest_id: str) -> str:
        return f"{MANIFESTS}{manifest_id}.json"

    def has_manifest(self, manifest_id: str) -> bool:
        return self.bucket.head(self.manifest_key(manifest_id)) is not None

    def put_manifest(self, manifest_id: str, data: bytes) -> bool:
        """Publish a snapshot, sealed (its chunks must all be there, under the write key); True
        when this call wrote it, False when the bucket had it already (pushed by another host)."""
        return self.bucket.put(self.manifest_key(manifest_id), self.envelope.seal(envelope.MANIFEST, manifest_id, data),
                               only_if_absent=True)

    def get_manifest(self, manifest_id: str) -> tuple[bytes, str | None] | None:
        """(a manifest's bytes, the key id that sealed it and its chunks' names; None: plaintext),
        or None when the bucket lacks it."""
        key = self.manifest_key(manifest_id)
        try:
            sealed = self.bucket.get(key)
        except KeyError:
            return None
        data, key_id = self._open(key, envelope.MANIFEST, manifest_id, sealed)
        return bytes(data), key_id

    def manifest_ids(self) -> list[str]:
        return sorted(key[len(MANIFESTS) : -len(".json")] for key, _, _ in self.bucket.list(MANIFESTS)
                      if key.endswith(".json"))

    def describe(self, key: str) -> str:
        """The full name of an object of this tier, for messages."""
        return self.bucket.full_key(key)

    def _open(self, key: str, role: str, name: str, sealed: memoryview) -> tuple[bytes | memoryview, str | None]:
        """Envelope.open for object ``key``, its failures as the errors naming it."""
        try:
            return self.envelope.open(role, name, sealed)
        except envelope.KeyUnknown as exc:
            raise RemoteKeyMissing(key=self.bucket.full_key(key), bucket=self.cfg.bucket, key_id=exc.key_id,
                                   held=self.envelope.held()) from None
        except envelope.Unopenable as exc:
            raise RemoteUndecryptable(key=self.bucket.full_key(key), bucket=self.cfg.bucket, sealing=exc.sealing,
                                      reason=str(exc)) from None

    # -- locks ----------------------------------------------------------------

    def lock(self, kind: str) -> RemoteLock:
        return RemoteLock(self, kind)

    def probe(self) -> int:
        """How many snapshots the bucket holds (one listing: reachable, allowed, bucket there)."""
        return len(self.manifest_ids())

    def locks(self) -> list[tuple[str, datetime]]:
        """(key, last modified) of every lock object."""
        return [(key, mtime) for key, _, mtime in self.bucket.list(LOCKS)]


def _chunk_key(name: str) -> str:
    return f"{CHUNKS}{name[:2]}/{name}"


class RemoteLock(Poller):
    """A lock object in the bucket, kept fresh while held (restic's scheme).

    ``push`` locks are shared: pushes run together, but not while a ``gc`` lock
    is fresh. A ``gc`` lock is exclusive: gc runs only when no other fresh lock
    exists. Each side writes its own lock first and lists the others second, so
    of a push and a gc that start together at least one sees the other and
    backs off (S3 lists are strongly consistent). Ages are measured against the
    server's clock (the last-modified time of this lock), never this host's.
    A push that meets a gc lock retries for ``wait`` seconds before RemoteBusy.
    """

    def __init__(self, remote: RemoteStore, kind: str, wait: float = 30.0) -> None:
        super().__init__(f"remote-lock-{kind}", LOCK_REFRESH_SECONDS)
        self.remote = remote
        self.kind = kind
        self.wait = wait
        self.key = f"{LOCKS}{kind}-{secrets.token_hex(8)}.json"
        self.body = f'{{"kind": "{kind}", "host": "{socket.gethostname()}", "pid": {os.getpid()}}}\n'.encode()
        self.refreshed = 0.0  # time.monotonic() of the last write of this lock that succeeded

    def __enter__(self) -> RemoteLock:
        deadline = time.monotonic() + (self.wait if self.kind != "gc" else 0.0)
        pause = 0.2
        while True:
            conflict = self._try()
            if conflict is None:
                break
            if time.monotonic() + pause > deadline:
                raise RemoteBusy(endpoint=self.remote.cfg.endpoint, bucket=self.remote.cfg.bucket, reason=conflict)
            time.sleep(pause)
            pause = min(pause * 2, 5.0)
        log.info("remote.locked", lock=self.key)
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(None, None, None)
        try:
            self.remote.bucket.delete([self.key])
        except Exception as err:  # the operation's own outcome is what counts; the lock goes stale
            log.warning("remote.unlock_failed", lock=self.key, error=str(err))
            return
        log.info("remote.unlocked", lock=self.key)

    def poll(self) -> bool:
        try:
            self._write()
        except Exception as exc:  # the next refresh tries again; a lock goes stale only after LOCK_STALE
            log.warning("remote.lock_refresh_failed", lock=self.key, error=str(exc))
        return True

    def check_fresh(self) -> None:
        """RemoteBusy unless this lock was written within half of LOCK_STALE: past that, a gc on
        another host may have taken it for a dead host's and removed chunks this push relies on."""
        age = time.monotonic() - self.refreshed
        if age > LOCK_STALE.total_seconds() / 2:
            raise RemoteBusy(endpoint=self.remote.cfg.endpoint, bucket=self.remote.cfg.bucket,
                             reason=f"lock {self.remote.describe(self.key)} could not be refreshed for {age:.0f} s, "
                             "so a garbage collection may have run; nothing was published, push again")

    def _write(self) -> None:
        self.remote.bucket.put(self.key, self.body)
        self.refreshed = time.monotonic()

    def _try(self) -> str | None:
        """Write this lock and look for a conflicting one; None when held, else why not (this
        lock is removed again)."""
        self._write()
        found = self.remote.locks()
        now = next((mtime for key, mtime in found if key == self.key), None)
        if now is None:
            raise RemoteBusy(endpoint=self.remote.cfg.endpoint, bucket=self.remote.cfg.bucket,
                             reason=f"lock {self.remote.describe(self.key)} vanished right after it was written")
        others = [key for key, mtime in found if key != self.key and now - mtime < LOCK_STALE
                  and (self.kind == "gc" or key.startswith(f"{LOCKS}gc-"))]
        if not others:
            return None
        self.remote.bucket.delete([self.key])
        busy = "a garbage collection" if any(k.startswith(f"{LOCKS}gc-") for k in others) else "a push"
        return f"{busy} holds lock {self.remote.describe(others[0])}"

    def stale_locks(self) -> list[str]:
        """Keys of locks older than LOCK_STALE (their holders died), by the server's clock."""
        found = self.remote.locks()
        now = next((mtime for key, mtime in found if key == self.key), None)
        return [key for key, mtime in found if now is not None and now - mtime >= LOCK_STALE]
