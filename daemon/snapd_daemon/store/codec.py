"""The on-disk form of one chunk, self-describing so it decodes without configuration.

    offset  size  field
    0       4     magic b"SNC1"
    4       1     codec: 0 = stored raw, 1 = one zstd frame, 2 = byte planes
    5       3     reserved (zero)
    8       8     raw length, little-endian u64
    16      ...   payload

Byte planes (2), for an even raw length L: the odd bytes (the high byte of each
little-endian 16-bit word: a bf16 or fp16 number's sign and exponent) as one
zstd frame, then the L/2 even bytes (mantissas, close to random) as they are.
Model weights store smaller that way than as one frame (0.67 against 0.78 of
their size for normally distributed bf16) and decode 1.3-2.1 times as fast,
since only one byte in two goes through zstd; they encode 1.0-1.5 times as fast
(scripts/bench/codec.py: 7.4 against 5.5 GB/s with 16 threads on the H200
host, 0.96-1.17 times on the CI VM). ``encode`` picks the codec per
chunk from a sample; a reader needs no setting to decode any of them.

A chunk is named by the BLAKE3 hash (hex) of its raw bytes; ``decode`` checks
the length and the hash, so a reader never returns bytes that differ from what
was stored.
"""

from __future__ import annotations

import contextlib
import functools
import math
import struct
import threading
from collections.abc import Sequence

import blake3
import numpy
import zstandard

from snapd_daemon.util.buffers import ReadBuffers, read_exactly

MAGIC = b"SNC1"
HEADER = struct.Struct("<4sB3xQ")
CODEC_RAW = 0
CODEC_ZSTD = 1
CODEC_PLANES = 2
_WORD = numpy.dtype("<u2")
# zstd level 1: ~1.1-1.6 GB/s per core here on page data; higher levels cost
# several times the CPU for a few percent on model weights (FIELD-NOTES: 0.635 at level 1).
ZSTD_LEVEL = 1
# Keep the compressed form only if it saves at least this fraction (the default of
# store_raw_below): random data is stored raw so that restores skip decompression
# entirely. 5 %: about where a page-cache-hot restore's decoding CPU, spread over
# 16 threads, costs what the extra bytes cost a cold one (docs/restore-speed.md).
MIN_SAVING = 0.05
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


def _plane_compressor() -> zstandard.ZstdCompressor:
    """For high-byte planes: matches of 7 bytes or more only, from a 64-entry table (zstd's
    smallest). On bf16 exponents this stores smaller than level 1 (0.34 against 0.37)
    and compresses 2.4 times and decodes 1.7 times as fast (fewer matches: mostly
    Huffman-coded literals); a table of 1024 entries compressed at 1.4 times, 256 at
    2.0, and 128 took 1.12 times as long as 64 for the same size (CI VM; on the H200
    host zstd is the ingest's largest cost, 23% of all CPU samples of a checkpoint)."""
    if not hasattr(_local, "pctx"):
        _local.pctx = zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters(
            window_log=17, chain_log=6, hash_log=6, search_log=1, min_match=7, target_length=0,
            strategy=zstandard.STRATEGY_FAST))
    return _local.pctx


def _decompressor() -> zstandard.ZstdDecompressor:
    if not hasattr(_local, "dctx"):
        _local.dctx = zstandard.ZstdDecompressor()
    return _local.dctx


def _probe(raw: bytes | memoryview, min_saving: float) -> tuple[int, float]:
    """The codec for ``raw``, from a 64 KiB sample (four 16 KiB pieces at even offsets
    spread over the chunk) compressed whole and as byte planes: incompressible data
    (random bytes, already-compressed weights) then costs a few percent of a full
    compression instead of all of it. With it, the sample's best compressed size over
    its size (1.0 for a chunk too small to sample: it is compressed whole)."""
    if len(raw) <= 4 * _PROBE:
        return CODEC_ZSTD, 1.0
    view = memoryview(raw)
    step = len(raw) // 4 & ~1
    sample = b"".join(view[i * step : i * step + _PROBE] for i in range(4))
    whole = len(_compressor().compress(sample))
    planes = len(_plane_compressor().compress(_planes(sample)[0])) + len(sample) // 2 if len(raw) % 2 == 0 else whole + 1
    ratio = min(whole, planes) / len(sample)
    if min(whole, planes) > len(sample) * (1 - min_saving):
        return CODEC_RAW, ratio
    return (CODEC_PLANES if planes <= whole else CODEC_ZSTD), ratio


def _planes(raw: bytes | memoryview) -> tuple[numpy.ndarray, numpy.ndarray]:
    """(odd bytes, even bytes) of ``raw`` (even length): the high and low bytes of its
    little-endian 16-bit words (word arithmetic runs several times faster than strided
    byte copies), in this thread's buffers (fresh ones per chunk cost page faults),
    valid until its next call."""
    words = numpy.frombuffer(raw, _WORD)
    if getattr(_local, "planes", None) is None or _local.planes.size < 2 * words.size:
        _local.planes = numpy.empty(2 * words.size, numpy.uint8)
    high, low = _local.planes[: words.size], _local.planes[words.size : 2 * words.size]
    numpy.right_shift(words, 8, out=high, casting="unsafe")
    numpy.copyto(low, words, casting="unsafe")
    return high, low


Parts = tuple[bytes | memoryview, ...]


def encode(raw: bytes | memoryview, min_saving: float = MIN_SAVING) -> Parts:
    """The chunk file for ``raw`` as parts to write one after the other (``writev``), the
    header first: byte planes or zstd, the one the sample says, if it saves at least
    ``min_saving`` (a fraction) of the size; else the raw bytes themselves. Nothing is
    copied into one object (that copy held the GIL for a megabyte per chunk); the low
    plane is this thread's buffer, valid until its next ``encode``. The payload is never
    longer than ``raw``."""
    return encode_measured(raw, min_saving)[0]


def encode_measured(raw: bytes | memoryview, min_saving: float = MIN_SAVING) -> tuple[Parts, int]:
    """``encode``'s parts, and the bytes the chunk file would take with any compression
    that makes it smaller kept (``min_saving`` 0), whatever ``min_saving`` chose: exact
    when the chunk was compressed here, else (the sample said it saves too little to
    try) estimated from the sample's ratio; never more than the file stored raw. What
    lets an ingest tell how big the store would be under the other policy."""
    codec, ratio = _probe(raw, min_saving)
    as_raw = HEADER.size + len(raw)
    if codec == CODEC_PLANES:
        high, low = _planes(raw)
        frame = _plane_compressor().compress(high)
        packed = len(frame) + len(low)
        if packed <= len(raw) * (1 - min_saving):
            return (HEADER.pack(MAGIC, CODEC_PLANES, len(raw)), frame, memoryview(low)), HEADER.size + packed
    elif codec == CODEC_ZSTD:
        frame = _compressor().compress(raw)
        packed = len(frame)
        if packed <= len(raw) * (1 - min_saving):
            return (HEADER.pack(MAGIC, CODEC_ZSTD, len(raw)), frame), HEADER.size + packed
    else:
        packed = math.ceil(len(raw) * ratio)
    return (HEADER.pack(MAGIC, CODEC_RAW, len(raw)), raw), min(as_raw, HEADER.size + packed)


def decode(blob: bytes | bytearray | memoryview, expected_id: str, out: ReadBuffers | None = None) -> bytes | memoryview:
    """Raw bytes of a chunk file, verified against ``expected_id``: a view into
    ``blob`` when the chunk is stored raw; with ``out``, a compressed chunk is
    decompressed into ``out.raw`` (no fresh memory) and the view is into that."""
    raw = _unverified(blob, out)
    actual = chunk_id(raw)
    if actual != expected_id:
        raise ChunkDecodeError(f"content hashes to {actual}")
    return raw


def decode_many(blobs: Sequence[memoryview], lengths: Sequence[int], slots: Sequence[memoryview],
                out: ReadBuffers) -> list[memoryview | None]:
    """The raw bytes of each chunk file of a batch (``lengths``: their raw lengths, as the
    manifest says), NOT verified: the caller hashes each before it uses it. A raw chunk
    is a view into its blob, a compressed one is decoded into ``slots[i]`` (``lengths[i]``
    bytes or more), byte planes through ``out.plane``. None for a chunk that does not
    decode to its length: the caller reads it again alone (``decode``), which says why.
    Frames are decoded one by one into these reused slots: zstandard's
    ``multi_decompress_to_buffer`` (one call a batch) took 1.6-2.2 times the CPU time on
    the CI VM, its output being fresh memory each call (docs/restore-speed.md)."""
    decoded: list[memoryview | None] = []
    for blob, length, slot in zip(blobs, lengths, slots, strict=True):
        raw = None
        if len(blob) >= HEADER.size and HEADER.unpack_from(blob)[2] == length:  # else no decoding to a wrong size
            with contextlib.suppress(ChunkDecodeError):
                raw = memoryview(_unverified(blob, out, slot))
        decoded.append(raw)
    return decoded


def _unverified(blob: bytes | bytearray | memoryview, out: ReadBuffers | None,
                dest: memoryview | None = None) -> bytes | memoryview:
    """Raw bytes of a chunk file, of the length its header says, not yet hashed: a view into
    ``blob`` when stored raw, else decoded into ``dest`` (that length or more), else
    ``out.raw``, else fresh memory. Raises ChunkDecodeError."""
    if len(blob) < HEADER.size:
        raise ChunkDecodeError(f"{len(blob)} bytes, shorter than the {HEADER.size}-byte header")
    magic, codec, length = HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise ChunkDecodeError(f"bad magic {magic!r}")
    payload = memoryview(blob)[HEADER.size :]
    raw: bytes | memoryview
    if codec == CODEC_RAW:
        raw = payload
    elif codec in (CODEC_ZSTD, CODEC_PLANES):
        if dest is None and out is not None:
            dest = out.raw(length)
        try:
            raw = (_decompress(payload, length, dest) if codec == CODEC_ZSTD
                   else _join_planes(payload, length, out.plane(length // 2) if out is not None else None, dest))
        except zstandard.ZstdError as exc:
            raise ChunkDecodeError(f"zstd: {exc}") from exc
    else:
        raise ChunkDecodeError(f"unknown codec {codec}")
    if len(raw) != length:
        raise ChunkDecodeError(f"{len(raw)} bytes decoded, header says {length}")
    return raw


def _decompress(payload: memoryview, length: int, dest: memoryview | None) -> bytes | memoryview:
    """At most ``length`` decompressed bytes of the zstd frame ``payload``, in ``dest`` (else fresh)."""
    if dest is None:
        return _decompressor().decompress(payload, max_output_size=length)
    view = dest[:length]
    return view[: read_exactly(_decompressor().stream_reader(payload, read_size=len(payload)), view)]


def _join_planes(payload: memoryview, length: int, scratch: memoryview | None, dest: memoryview | None) -> memoryview:
    """The ``length`` raw bytes of a byte-planes payload, joined into ``dest`` (else fresh
    memory), the high plane decoded into ``scratch`` (``length`` / 2 bytes; else fresh)."""
    half = length // 2
    if length % 2 or len(payload) < half:
        raise ChunkDecodeError(f"byte planes of {length} bytes in a {len(payload)}-byte payload")
    frame, low = payload[: len(payload) - half], payload[len(payload) - half :]
    scratch = scratch if scratch is not None else memoryview(bytearray(half))
    high = read_exactly(_decompressor().stream_reader(frame, read_size=len(frame)), scratch)
    if high != half:
        raise ChunkDecodeError(f"{high} high-plane bytes decoded, {half} expected")
    return _interleave(scratch, low, dest[:length] if dest is not None else memoryview(bytearray(length)))


def _interleave(high: memoryview, low: memoryview, dest: memoryview) -> memoryview:
    """``dest`` filled with the 16-bit words high << 8 | low (numpy, without the GIL)."""
    words = numpy.frombuffer(dest, _WORD)
    numpy.left_shift(numpy.frombuffer(high, numpy.uint8), 8, out=words, dtype=_WORD)
    numpy.bitwise_or(words, numpy.frombuffer(low, numpy.uint8), out=words)
    return dest
