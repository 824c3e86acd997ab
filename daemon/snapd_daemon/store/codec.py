"""The on-disk form of one chunk, self-describing so it decodes without configuration.

    offset  size  field
    0       4     magic b"SNC1"
    4       1     codec: 0 = stored raw, 1 = one zstd frame
    5       3     reserved (zero)
    8       8     raw length, little-endian u64
    16      ...   payload

A chunk is named by the BLAKE3 hash (hex) of its raw bytes; ``decode`` checks
the length and the hash, so a reader never returns bytes that differ from what
was stored.
"""

from __future__ import annotations

import functools
import struct
import threading

import blake3
import zstandard

MAGIC = b"SNC1"
HEADER = struct.Struct("<4sB3xQ")
CODEC_RAW = 0
CODEC_ZSTD = 1
# zstd level 1: ~1.1-1.6 GB/s per core here on page data; higher levels cost
# several times the CPU for a few percent on model weights (FIELD-NOTES: 0.635 at level 1).
ZSTD_LEVEL = 1
# Keep the compressed form only if it saves at least this fraction; random data
# is stored raw so that restores skip decompression entirely.
MIN_SAVING = 0.03
_PROBE = 16 << 10

_local = threading.local()


class ChunkDecodeError(Exception):
    """A chunk file that is truncated, of an unknown codec, or whose bytes do not hash to its name."""


def chunk_id(raw: bytes | memoryview) -> str:
    return blake3.blake3(raw).hexdigest()


@functools.lru_cache(maxsize=64)
def zero_id(length: int) -> str:
    """The id ``length`` zero bytes would have: comparing hashes finds zero chunks
    without a scan of the data under the GIL (bytes.count holds it; blake3 does not)."""
    return chunk_id(bytes(length))


def _compressor() -> zstandard.ZstdCompressor:
    # python-zstandard objects are not thread-safe: one per thread
    if not hasattr(_local, "cctx"):
        _local.cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return _local.cctx


def _decompressor() -> zstandard.ZstdDecompressor:
    if not hasattr(_local, "dctx"):
        _local.dctx = zstandard.ZstdDecompressor()
    return _local.dctx


def _worth_compressing(raw: bytes | memoryview) -> bool:
    """Compress a 64 KiB sample (four 16 KiB pieces spread over the chunk) first:
    incompressible data (random bytes, already-compressed weights) then costs
    1/32 of a full compression instead of all of it."""
    if len(raw) <= 4 * _PROBE:
        return True
    view = memoryview(raw)
    step = len(raw) // 4
    sample = b"".join(view[i * step : i * step + _PROBE] for i in range(4))
    return len(_compressor().compress(sample)) <= len(sample) * (1 - MIN_SAVING)


def encode(raw: bytes | memoryview) -> tuple[bytes, bytes | memoryview]:
    """(header, payload) for ``raw``: zstd if it saves enough, else the raw bytes
    themselves (not copied)."""
    if _worth_compressing(raw):
        packed = _compressor().compress(raw)
        if len(packed) <= len(raw) * (1 - MIN_SAVING):
            return HEADER.pack(MAGIC, CODEC_ZSTD, len(raw)), packed
    return HEADER.pack(MAGIC, CODEC_RAW, len(raw)), raw


def decode(blob: bytes | bytearray | memoryview, expected_id: str) -> bytes | memoryview:
    """Raw bytes of a chunk file, verified against ``expected_id`` (a view into
    ``blob`` when the chunk is stored raw)."""
    if len(blob) < HEADER.size:
        raise ChunkDecodeError(f"{len(blob)} bytes, shorter than the {HEADER.size}-byte header")
    magic, codec, length = HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise ChunkDecodeError(f"bad magic {magic!r}")
    payload = memoryview(blob)[HEADER.size :]
    raw: bytes | memoryview
    if codec == CODEC_RAW:
        raw = payload
    elif codec == CODEC_ZSTD:
        try:
            raw = _decompressor().decompress(payload, max_output_size=length)
        except zstandard.ZstdError as exc:
            raise ChunkDecodeError(f"zstd: {exc}") from exc
    else:
        raise ChunkDecodeError(f"unknown codec {codec}")
    if len(raw) != length:
        raise ChunkDecodeError(f"{len(raw)} bytes decoded, header says {length}")
    actual = chunk_id(raw)
    if actual != expected_id:
        raise ChunkDecodeError(f"content hashes to {actual}")
    return raw
