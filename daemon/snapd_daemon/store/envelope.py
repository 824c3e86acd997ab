"""The remote tier's encryption: object names, AES-256-GCM envelopes and the fleet keys.

A fleet key is a file of 32 random bytes shared by the hosts of one bucket
(``remote_encryption_key``: the key this host writes with; ``remote_read_key``:
older keys it still reads). From a key K, BLAKE3's key derivation gives:

- its key id: the first 8 bytes of derive_key("gpu-snapd remote key id v1", K),
  written in hex; every sealed object names the key that sealed it;
- the name key: a chunk's object name is BLAKE3 keyed by it of the chunk id, so
  the bucket never sees a chunk's plaintext hash (which would confirm a guess of
  known content) while every host with K names a chunk alike (dedupe kept);
- the object key: each object is sealed under its own key, BLAKE3 keyed by it
  of role and name ("chunk" and the chunk id, "manifest" and the snapshot id),
  so a chunk's key is convergent (every host derives the same one) and no key
  seals more than one object's content.

A sealed object is::

    offset  size  field
    0       4     magic b"SNE1"
    4       8     key id
    12      12    nonce (random)
    24      ...   AES-256-GCM ciphertext of the object's bytes, then its 16-byte tag

The associated data is the 24-byte header, the role and the name, so an object
decrypts only under the name and role it was written for: one moved to another
chunk's name, a manifest put in another snapshot's place, or a changed header
fails authentication. Nonces are random although keys are convergent: the
stored form of one chunk differs between snapd versions (the codec's choices
change), so a nonce derived from the name would repeat over different bytes.

AES-256-GCM was measured against ChaCha20-Poly1305 (``cryptography``, 4 MiB
objects, one core of the CI VM's AMD EPYC with AES-NI): 9.5 GB/s against 3.4 to
encrypt and to decrypt alike.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from snapd_daemon.errors import ConfigInvalid

MAGIC = b"SNE1"
HEADER = struct.Struct("<4s8s12s")
TAG_BYTES = 16
KEY_BYTES = 32
CHUNK = "chunk"
MANIFEST = "manifest"


class KeyUnknown(Exception):
    """An object sealed with a key id this host does not hold (``key_id``)."""

    def __init__(self, key_id: str) -> None:
        super().__init__(key_id)
        self.key_id = key_id


class Unopenable(Exception):
    """An object that cannot be opened: ``sealing`` says how it was sealed, the message why not."""

    def __init__(self, sealing: str, reason: str) -> None:
        super().__init__(reason)
        self.sealing = sealing


@dataclass(frozen=True)
class FleetKey:
    """One fleet key's derived keys (the key itself is not kept); ``path``: where it was read."""

    id: str
    path: Path
    name_key: bytes = field(repr=False)
    object_key: bytes = field(repr=False)

    @classmethod
    def derive(cls, secret: bytes, path: Path) -> FleetKey:
        def sub(purpose: str) -> bytes:
            return blake3.blake3(secret, derive_key_context=f"gpu-snapd remote {purpose} v1").digest()

        return cls(sub("key id")[:8].hex(), path, sub("object name"), sub("object key"))

    @classmethod
    def load(cls, path: Path, option: str) -> FleetKey:
        """The key in file ``path``; ConfigInvalid naming ``option`` and the file when it is not
        a regular file of exactly 32 bytes that other users can neither read nor write."""
        source = f"{option} {path}"
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                secret = f.read(KEY_BYTES + 1)
        except OSError as exc:
            raise ConfigInvalid(source=source, reason=exc.strerror or str(exc)) from exc
        if not stat.S_ISREG(st.st_mode):
            raise ConfigInvalid(source=source, reason="not a regular file")
        if st.st_mode & (stat.S_IROTH | stat.S_IWOTH):
            raise ConfigInvalid(source=source, reason=f"mode {stat.S_IMODE(st.st_mode):04o} lets every user read or "
                                "write the key; `chmod 600` it (owner root)")
        if len(secret) != KEY_BYTES:
            raise ConfigInvalid(source=source, reason=f"{'more than 32' if len(secret) > KEY_BYTES else len(secret)} "
                                "bytes; a key file holds exactly 32 random bytes (`head -c 32 /dev/urandom > FILE`)")
        return cls.derive(secret, path)


class Envelope:
    """How this host names, seals and opens the remote tier's objects.

    With a write key every object written is sealed under it; objects sealed
    under any held key are read. Plaintext objects (a bucket written before
    encryption, or by a host configured without it) are written and read only
    with ``allow_plaintext``; without it they are refused, so nothing
    unauthenticated is ever restored. Thread-safe (immutable).
    """

    def __init__(self, write: FleetKey | None, read: Iterable[FleetKey] = (), allow_plaintext: bool = False) -> None:
        if write is None and not allow_plaintext:
            raise ConfigInvalid(source="remote_encryption_key", reason="the remote tier needs a fleet key, or "
                                "remote_allow_plaintext = true to upload process memory unencrypted (see "
                                "docs/remote-encryption.md)")
        self.write = write
        self.allow_plaintext = allow_plaintext
        self.keys = {k.id: k for k in ([write] if write else []) + list(read)}

    @classmethod
    def load(cls, write: Path | None, read: Iterable[Path], allow_plaintext: bool) -> Envelope:
        """From key files (FleetKey.load's checks); ConfigInvalid for read keys without a write key."""
        read = list(read)
        if read and write is None:
            raise ConfigInvalid(source="remote_read_key", reason="given without remote_encryption_key, the key "
                                "this host writes with")
        return cls(FleetKey.load(write, "remote_encryption_key") if write else None,
                   [FleetKey.load(p, "remote_read_key") for p in read], allow_plaintext)

    @property
    def write_key_id(self) -> str | None:
        return self.write.id if self.write else None

    def describe(self) -> str:
        """How objects are written and read, for status and logs."""
        if self.write is None:
            return "objects written unencrypted (remote_allow_plaintext)"
        return (f"objects encrypted with key id {self.write.id}, {len(self.keys)} key(s) readable"
                + (", unencrypted ones too (remote_allow_plaintext)" if self.allow_plaintext else ""))

    def held(self) -> str:
        """The key ids held, for messages."""
        return ", ".join(f"key id {k.id} ({k.path})" for k in self.keys.values()) or "no key"

    def chunk_name(self, cid: str, key_id: str | None) -> str:
        """The object name of chunk ``cid`` among objects sealed with ``key_id``, a key id held
        (that of the write key or of a manifest opened); None: plaintext, named by its id."""
        if key_id is None:
            return cid
        return blake3.blake3(cid.encode(), key=self.keys[key_id].name_key).hexdigest()

    def seal(self, role: str, name: str, data: bytes | memoryview) -> bytes | memoryview:
        """``data`` as the object of ``role`` and ``name`` is written (as it is without a write key)."""
        if self.write is None:
            return data
        header = HEADER.pack(MAGIC, bytes.fromhex(self.write.id), os.urandom(12))
        return header + _cipher(self.write, role, name).encrypt(header[-12:], data, _associated(header, role, name))

    def open(self, role: str, name: str, blob: bytes | memoryview) -> tuple[bytes | memoryview, str | None]:
        """(the object's bytes, the key id that sealed it or None for plaintext). Raises KeyUnknown
        for a key id not held, Unopenable for an object that fails authentication (altered,
        truncated, swapped) or is plaintext while plaintext is not allowed."""
        if bytes(blob[:4]) != MAGIC:
            if not self.allow_plaintext:
                raise Unopenable("not encrypted", "a plaintext object, read only with remote_allow_plaintext = true "
                                 "(a bucket written before encryption; see docs/remote-encryption.md)")
            return blob, None
        if len(blob) < HEADER.size + TAG_BYTES:
            raise Unopenable("encrypted", f"truncated: {len(blob)} bytes, shorter than a sealed object's "
                             f"{HEADER.size + TAG_BYTES}-byte header and tag")
        header = bytes(blob[: HEADER.size])
        _, key_bytes, nonce = HEADER.unpack(header)
        key_id = key_bytes.hex()
        key = self.keys.get(key_id)
        if key is None:
            raise KeyUnknown(key_id)
        try:
            data = _cipher(key, role, name).decrypt(nonce, blob[HEADER.size :], _associated(header, role, name))
        except InvalidTag:
            raise Unopenable(f"sealed with key id {key_id}", f"it fails authentication as {role} {name}: its bytes "
                             "were altered or truncated, or it is another object put under this name") from None
        return data, key_id


def _cipher(key: FleetKey, role: str, name: str) -> AESGCM:
    return AESGCM(blake3.blake3(f"{role}\0{name}".encode(), key=key.object_key).digest())


def _associated(header: bytes, role: str, name: str) -> bytes:
    return header + f"{role}\0{name}".encode()
