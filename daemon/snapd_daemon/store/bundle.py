"""The export stream: one snapshot's manifest and chunks as one verifiable byte stream.

Format, version 1 (all integers little-endian)::

    header   8 bytes  b"SNAPDEXP"
             4 bytes  u32 format version (1)
    records  1 byte   kind: 1 MANIFEST, 2 CHUNK, 3 END
             8 bytes  u64 payload length (at most MAX_RECORD)
             payload
      MANIFEST (exactly one, first): the manifest's bytes as the store keeps them
      CHUNK    (any number):         64 bytes hex chunk id, then the chunk file as stored
                                     (codec.py: header + raw or zstd payload)
      END      (exactly one, last):  u64 number of CHUNK records, then the 32-byte BLAKE3
                                     digest of every byte before the END record

A reader checks the magic and version, the record order, each chunk against its id
(``codec.decode``), the count and the digest; nothing after END is allowed. Staging
and publishing what a stream brings is imports.py's (as for a pull).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

import blake3

from snapd_daemon.errors import ImportInvalid
from snapd_daemon.store import codec

MAGIC = b"SNAPDEXP"
VERSION = 1
HEADER = struct.Struct("<8sI")
RECORD = struct.Struct("<BQ")
END = struct.Struct("<Q32s")
MANIFEST, CHUNK, FINAL = 1, 2, 3
ID_LENGTH = 64
# bounds what a reader buffers for one record: a chunk is at most a few MiB, a manifest less
MAX_RECORD = 256 << 20
NOT_A_STREAM = "not a snapd export stream (it does not start with SNAPDEXP; `snapd export` writes one)"


def record(kind: int, *parts: bytes | memoryview) -> list[bytes | memoryview]:
    """The pieces of one record."""
    return [RECORD.pack(kind, sum(len(p) for p in parts)), *parts]


class Writer:
    """Builds the stream's pieces and the digest over them."""

    def __init__(self) -> None:
        self._digest = blake3.blake3()
        self.chunks = 0

    def _out(self, pieces: list[bytes | memoryview]) -> Iterator[bytes | memoryview]:
        for piece in pieces:
            self._digest.update(piece)
            yield piece

    def header(self, manifest: bytes) -> Iterator[bytes | memoryview]:
        yield from self._out([HEADER.pack(MAGIC, VERSION), *record(MANIFEST, manifest)])

    def chunk(self, cid: str, stored: bytes | memoryview) -> Iterator[bytes | memoryview]:
        self.chunks += 1
        yield from self._out(record(CHUNK, cid.encode(), stored))

    def end(self) -> Iterator[bytes | memoryview]:
        yield from record(FINAL, END.pack(self.chunks, self._digest.digest()))


class Reader:
    """Parses a stream given as pieces of any size: ``manifest()`` first, then ``chunks()``
    (verified (id, stored bytes) pairs) to its END; raises ImportInvalid on anything wrong."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self._pieces = iter(pieces)
        self._buffer = bytearray()
        self._digest = blake3.blake3()
        self._read = 0

    def _take(self, n: int, what: str) -> bytes:
        while len(self._buffer) < n:
            piece = next(self._pieces, None)
            if piece is None:
                raise ImportInvalid(reason=f"the stream ends after {self._read + len(self._buffer)} bytes, inside "
                                    f"{what}: it was cut short")
            self._buffer += piece
        taken = bytes(self._buffer[:n])
        del self._buffer[:n]
        self._read += n
        return taken

    def _record(self) -> tuple[int, bytes]:
        head = self._take(RECORD.size, "a record header")
        kind, length = RECORD.unpack(head)
        if kind not in (MANIFEST, CHUNK, FINAL) or length > MAX_RECORD:
            raise ImportInvalid(reason=f"bad record (kind {kind}, {length} bytes) at byte {self._read - RECORD.size}:"
                                " not an export stream, or a damaged one")
        payload = self._take(length, f"a record of {length} bytes")
        if kind != FINAL:
            self._digest.update(head)
            self._digest.update(payload)
        return kind, payload

    def manifest(self) -> bytes:
        try:
            head = self._take(HEADER.size, "the header")
        except ImportInvalid:
            # shorter than a header: the start of a real stream is cut short, anything else is not one
            start = bytes(self._buffer[:len(MAGIC)])
            if not start:
                raise ImportInvalid(reason="the stream is empty: not a snapd export stream") from None
            if not MAGIC.startswith(start):
                raise ImportInvalid(reason=NOT_A_STREAM) from None
            raise
        magic, version = HEADER.unpack(head)
        if magic != MAGIC:
            raise ImportInvalid(reason=NOT_A_STREAM)
        if version != VERSION:
            raise ImportInvalid(reason=f"export format version {version}; this snapd reads version {VERSION}")
        self._digest.update(head)
        kind, payload = self._record()
        if kind != MANIFEST:
            raise ImportInvalid(reason="the stream does not start with its manifest")
        return payload

    def chunks(self) -> Iterator[tuple[str, bytes]]:
        """Each chunk record, its bytes verified against its id; then the END record is checked."""
        count = 0
        while True:
            kind, payload = self._record()
            if kind == CHUNK:
                cid = payload[:ID_LENGTH].decode("ascii", "replace")
                stored = payload[ID_LENGTH:]
                try:
                    codec.decode(bytearray(stored), cid)
                except codec.ChunkDecodeError as exc:
                    raise ImportInvalid(reason=f"chunk {cid} (record {count + 1}) is corrupt: {exc}") from None
                count += 1
                yield cid, stored
            elif kind == FINAL:
                self._check_end(payload, count)
                return
            else:
                raise ImportInvalid(reason="a second manifest in the stream")

    def _check_end(self, payload: bytes, count: int) -> None:
        if len(payload) != END.size:
            raise ImportInvalid(reason="the END record is malformed")
        expected, digest = END.unpack(payload)
        if expected != count:
            raise ImportInvalid(reason=f"the stream holds {count} chunk(s), its END record says {expected}")
        if digest != self._digest.digest():
            raise ImportInvalid(reason="the stream's digest does not match its bytes (damaged in transit)")
        if self._buffer or next(self._pieces, None):
            raise ImportInvalid(reason="bytes after the END record")
