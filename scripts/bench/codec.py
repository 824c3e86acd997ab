#!/usr/bin/env python3
"""The store's chunk codec on model weights: byte planes against one zstd frame, in one run.

    .venv/bin/python scripts/bench/codec.py [--chunks 32] [--threads 1 16]

Chunks are 2 MiB of bf16 numbers drawn like model weights (normal, std 0.02). For
each form: the stored size as a fraction of the raw size, then encoding and
decoding (verified, into reused buffers, as a restore decodes) in GB/s (1e9
bytes of raw chunk a second) with each thread count, and the ratio of byte
planes to the frame. "frame" is what the store wrote before byte planes: a
64 KiB probe, then one zstd level-1 frame.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import zstandard

from lib import GB, bf16_weights, run_threads
from snapd_daemon.store import codec
from snapd_daemon.util.buffers import ReadBuffers

CHUNK = 2 << 20


def frame(raw: bytes, cctx: zstandard.ZstdCompressor) -> bytes:
    cctx.compress(raw[: 64 << 10])
    return codec.HEADER.pack(codec.MAGIC, codec.CODEC_ZSTD, len(raw)) + cctx.compress(raw)


def rate(work: Callable[[int, ReadBuffers, zstandard.ZstdCompressor], object], count: int, threads: int) -> float:
    """GB/s of raw chunk bytes with ``threads`` threads each going over all ``count`` chunks."""

    def run() -> None:
        buffers, cctx = ReadBuffers(), zstandard.ZstdCompressor(level=codec.ZSTD_LEVEL)
        for i in range(count):
            work(i, buffers, cctx)

    return threads * count * CHUNK / run_threads(run, threads) / GB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=32)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()
    raw = bf16_weights(args.chunks, CHUNK)
    ids = [codec.chunk_id(r) for r in raw]
    planes = [b"".join(bytes(part) for part in codec.encode(r)) for r in raw]
    cctx = zstandard.ZstdCompressor(level=codec.ZSTD_LEVEL)
    frames = [frame(r, cctx) for r in raw]
    assert all(p[4] == codec.CODEC_PLANES for p in planes), "the probe did not choose byte planes for weights"
    size = len(raw) * CHUNK
    print(f"stored / raw: byte planes {sum(map(len, planes)) / size:.3f}, frame {sum(map(len, frames)) / size:.3f}")
    rows = [
        ("encode", lambda i, b, c: codec.encode(raw[i]), lambda i, b, c: frame(raw[i], c)),
        ("decode", lambda i, b, c: codec.decode(planes[i], ids[i], b), lambda i, b, c: codec.decode(frames[i], ids[i], b)),
    ]
    for name, by_planes, by_frame in rows:
        for threads in args.threads:
            p, f = rate(by_planes, len(raw), threads), rate(by_frame, len(raw), threads)
            print(f"{name} {threads:3d} thread(s): byte planes {p:6.2f} GB/s, frame {f:6.2f} GB/s, ratio {p / f:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
