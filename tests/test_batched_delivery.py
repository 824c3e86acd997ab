"""The restore's batched injection (restore/delivery.py, store read_chunks, memwrite.write_many)
against a real process: batch edges, a corrupt chunk inside a batch, mixed chunk encodings;
and the store_raw_below policy through a real daemon."""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy
import pytest
import zstandard

from harness import Daemon, Workloads, ask, gone, wait_for
from snapd_daemon.errors import ChunkCorrupt, InjectFailed
from snapd_daemon.host import memwrite
from snapd_daemon.restore import delivery
from snapd_daemon.restore.delivery import Delivery, Route, Target
from snapd_daemon.snapshots.manifest import Manifest
from snapd_daemon.store import codec
from snapd_daemon.store.hot import HotTier
from snapd_daemon.store.local import LocalStore
from snapd_daemon.store.model import ZERO_CHUNK, ChunkRef

CHUNK = 256 << 10
HOLDER = '''\
import ctypes, mmap, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
regions = [mmap.mmap(-1, int(n) + mmap.PAGESIZE, mmap.MAP_PRIVATE) for n in sys.argv[1:]]
bases = [ctypes.addressof(ctypes.c_char.from_buffer(m)) for m in regions]
for base, n in zip(bases, sys.argv[1:]):
    assert libc.mprotect(base + int(n), mmap.PAGESIZE, 0) == 0  # a guard page ends each region
print(" ".join(map(str, bases)), flush=True)
sys.stdin.read()
'''


class Holder:
    """A real process holding fresh private anonymous regions, each followed by a page no
    one may write, read back through /proc/PID/mem."""

    def __init__(self, *sizes: int) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, *map(str, sizes)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.bases = [int(a) for a in self.proc.stdout.readline().split()]  # type: ignore[union-attr]
        self.pid = self.proc.pid

    def read(self, address: int, length: int) -> bytes:
        with open(f"/proc/{self.pid}/mem", "rb") as mem:
            mem.seek(address)
            return mem.read(length)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    s = LocalStore(tmp_path / "state", 2)
    s.recover()
    return s


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of three chunks: a handful of chunks then crosses every batch edge."""
    monkeypatch.setattr(delivery, "BATCH_BYTES", 3 * CHUNK)


def bf16_like(n: int, seed: int) -> bytes:
    """Random mantissa bytes under structured exponents, as model weights are."""
    rng = numpy.random.default_rng(seed)
    words = rng.normal(0, 0.02, n // 2).astype(numpy.float32).view(numpy.uint32) >> 16
    return words.astype("<u2").tobytes()


def put(store: LocalStore, raw: bytes, parts: tuple[bytes | memoryview, ...] | None = None) -> ChunkRef:
    """Store ``raw`` as a chunk file: encoded by the codec, or made of ``parts`` as given."""
    cid = codec.chunk_id(raw)
    path = store.chunks.path(cid)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(parts if parts is not None else codec.encode(raw)))
    return ChunkRef(cid, len(raw))


def manifest() -> Manifest:
    return Manifest(id="snap", name="", labels={}, created=0.0, root_pid=1, processes=[], criu_version="",
                    kernel="", hostname="", shell_job=False, leave_running=False)


def deliver(store: LocalStore, routes: list[Route], threads: int = 2) -> None:
    Delivery(store, manifest(), threads, readahead_bytes=0).run(routes, lambda _done: None)


def codec_of(store: LocalStore, ref: ChunkRef) -> int:
    return store.chunks.path(ref.id).read_bytes()[4]


@pytest.fixture
def holder() -> Iterator[Holder]:
    h = Holder(8 * CHUNK, 3 * CHUNK)
    yield h
    h.close()


def test_batches_cross_regions_and_end_in_a_partial_batch(store: LocalStore, holder: Holder,
                                                          small_batches: None) -> None:
    """Seven chunks (batches of 3, 3, 1): the first five fill region A, the next two region B
    with one chunk split across A's end and B's start; every byte lands where routed."""
    raws = [os.urandom(CHUNK) for _ in range(7)]
    refs = [put(store, raw) for raw in raws]
    a, b = holder.bases
    half = CHUNK // 2
    routes = [Route(ref, "pages-1.img", i * CHUNK, [Target(0, CHUNK, a + i * CHUNK, pid=holder.pid)])
              for i, ref in enumerate(refs[:5])]
    routes.append(Route(refs[5], "pages-1.img", 5 * CHUNK, [Target(0, half, a + 8 * CHUNK - half, pid=holder.pid),
                                                           Target(half, half, b, pid=holder.pid)]))
    routes.append(Route(refs[6], "pages-1.img", 6 * CHUNK, [Target(0, CHUNK, b + half, pid=holder.pid)]))
    deliver(store, routes)
    assert holder.read(a, 5 * CHUNK) == b"".join(raws[:5])
    assert holder.read(a + 8 * CHUNK - half, half) == raws[5][:half]
    assert holder.read(b, half + CHUNK) == raws[5][half:] + raws[6]
    assert holder.read(a + 5 * CHUNK, 3 * CHUNK - half) == bytes(3 * CHUNK - half)  # never routed: untouched


def test_raw_compressed_planes_zero_and_old_format_chunks_in_one_batch(store: LocalStore, holder: Holder,
                                                                       small_batches: None) -> None:
    """One snapshot whose chunks are stored every way (raw, zstd, byte planes, a zero chunk
    with and without zero fill, and chunk files written byte by byte in the format older
    snapd wrote) restores byte for byte, batches mixing them."""
    weights, text, noise = bf16_like(CHUNK, 1), (b"snapd chunk text " * CHUNK)[:CHUNK], os.urandom(CHUNK)
    old_zstd = bytes(reversed(text))
    old_raw = os.urandom(CHUNK)
    refs = [put(store, weights), put(store, text), put(store, noise),
            put(store, old_zstd, (b"SNC1\x01\x00\x00\x00" + struct.pack("<Q", CHUNK),
                                  zstandard.ZstdCompressor(level=3).compress(old_zstd))),
            put(store, old_raw, (b"SNC1\x00\x00\x00\x00" + struct.pack("<Q", CHUNK), old_raw))]
    assert [codec_of(store, r) for r in refs] == [codec.CODEC_PLANES, codec.CODEC_ZSTD, codec.CODEC_RAW,
                                                 codec.CODEC_ZSTD, codec.CODEC_RAW]
    raws = [weights, text, noise, old_zstd, old_raw]
    a, b = holder.bases
    holder_bytes = b"\xff" * CHUNK
    memwrite.write(holder.pid, b + CHUNK, holder_bytes)  # zero-filled below
    memwrite.write(holder.pid, b + 2 * CHUNK, holder_bytes)  # left as it is below
    routes = [Route(ref, "pages-1.img", i * CHUNK, [Target(0, CHUNK, a + i * CHUNK, pid=holder.pid)])
              for i, ref in enumerate(refs)]
    zero = ChunkRef(ZERO_CHUNK, CHUNK)
    routes.insert(2, Route(zero, "pages-1.img", 9 * CHUNK, [Target(0, CHUNK, b + CHUNK, pid=holder.pid,
                                                                   zero_fill=True)]))
    routes.insert(4, Route(zero, "pages-1.img", 10 * CHUNK, [Target(0, CHUNK, b + 2 * CHUNK, pid=holder.pid)]))
    deliver(store, routes)
    assert holder.read(a, 5 * CHUNK) == b"".join(raws)
    assert holder.read(b + CHUNK, CHUNK) == bytes(CHUNK)
    assert holder.read(b + 2 * CHUNK, CHUNK) == holder_bytes


@pytest.mark.parametrize("damage", ["flipped payload byte", "truncated", "missing"])
def test_a_corrupt_chunk_inside_a_batch_stops_it_before_anything_is_written(
        store: LocalStore, holder: Holder, small_batches: None, damage: str) -> None:
    """The second chunk of a three-chunk batch is damaged on disk: ChunkCorrupt names it, the
    chunk goes to quarantine, and none of the batch's bytes (the good chunks before and
    after it included) reach the process."""
    raws = [bf16_like(CHUNK, 2), os.urandom(CHUNK), (b"text " * CHUNK)[:CHUNK]]
    refs = [put(store, raw) for raw in raws]
    bad = store.chunks.path(refs[1].id)
    blob = bytearray(bad.read_bytes())
    if damage == "flipped payload byte":
        blob[len(blob) // 2] ^= 1
        bad.write_bytes(blob)
    elif damage == "truncated":
        bad.write_bytes(blob[:-100])
    else:
        bad.unlink()
    a = holder.bases[0]
    routes = [Route(ref, "pages-7.img", i * CHUNK, [Target(0, CHUNK, a + i * CHUNK, pid=holder.pid)])
              for i, ref in enumerate(refs)]
    with pytest.raises(ChunkCorrupt) as caught:
        deliver(store, routes, threads=1)
    assert caught.value.fields["chunk"] == refs[1].id
    assert caught.value.fields["file"] == "pages-7.img" and caught.value.fields["offset"] == CHUNK
    assert holder.read(a, 3 * CHUNK) == bytes(3 * CHUNK)
    assert not bad.exists()  # quarantined (or was missing)


def test_a_bad_hot_copy_inside_a_batch_is_replaced_by_the_disk_chunk(tmp_path: Path, holder: Holder,
                                                                     small_batches: None) -> None:
    hot = HotTier(tmp_path / "hot")
    store = LocalStore(tmp_path / "state", 2, hot)
    store.recover()
    raws = [os.urandom(CHUNK) for _ in range(3)]
    refs = [put(store, raw) for raw in raws]
    for raw in raws:
        hot.add(codec.chunk_id(raw), raw)
    hot.path(refs[1].id).write_bytes(os.urandom(CHUNK))
    a = holder.bases[0]
    deliver(store, [Route(ref, "pages-1.img", i * CHUNK, [Target(0, CHUNK, a + i * CHUNK, pid=holder.pid)])
                    for i, ref in enumerate(refs)])
    assert holder.read(a, 3 * CHUNK) == b"".join(raws)
    assert not hot.has(refs[1].id)


def test_write_many_merges_pieces_goes_past_iov_max_and_names_a_refused_address(holder: Holder) -> None:
    a, b = holder.bases
    source = memoryview(os.urandom(8 * CHUNK))
    piece = 1024  # 2048 pieces, every other one adjacent to the last on both sides
    pieces = [(a + i * piece, source[i * piece : (i + 1) * piece]) for i in range(0, 8 * CHUNK // piece, 2)]
    pieces += [(a + i * piece, bytes(source[i * piece : (i + 1) * piece])) for i in range(1, 8 * CHUNK // piece, 2)]
    memwrite.write_many(holder.pid, pieces)
    assert holder.read(a, 8 * CHUNK) == bytes(source)
    end = b + 3 * CHUNK  # the second region's guard page: the rest of the run cannot be written
    with pytest.raises(memwrite.WriteRefused) as caught:
        memwrite.write_many(holder.pid, [(b, source[:CHUNK]), (end - 4096, source[: 2 * 4096])])
    assert caught.value.errno == errno.EFAULT and caught.value.address == end
    assert holder.read(end - 4096, 4096) == bytes(source[:4096])


def test_a_refused_write_is_an_inject_failure_naming_the_address(store: LocalStore, holder: Holder) -> None:
    raw = os.urandom(CHUNK)
    ref = put(store, raw)
    end = holder.bases[1] + 3 * CHUNK
    with pytest.raises(InjectFailed) as caught:
        deliver(store, [Route(ref, "pages-1.img", 0, [Target(0, CHUNK, end - CHUNK // 2, pid=holder.pid)])])
    assert caught.value.fields["address"] == f"{end:#x}"


def test_encode_measured_gives_the_compressed_size_whatever_the_policy() -> None:
    """Exact where the chunk was compressed, estimated from the sample where the policy kept
    it raw without trying, and never more than the raw file (random bytes)."""
    weights = bf16_like(1 << 20, 5)
    parts, compressed = codec.encode_measured(weights)
    assert parts[0][4] == codec.CODEC_PLANES and compressed == sum(len(part) for part in parts)
    raw_parts, estimate = codec.encode_measured(weights, 0.40)
    assert raw_parts[0][4] == codec.CODEC_RAW and abs(estimate - compressed) < 0.02 * compressed
    noise = os.urandom(1 << 20)
    assert codec.encode_measured(noise)[1] == codec.HEADER.size + len(noise)


def test_weights_stored_raw_below_a_threshold_restore_byte_for_byte(tmp_path: Path, workloads: Workloads) -> None:
    """--store-raw-below 40: bf16 weights (byte planes save about a third) are stored raw,
    the snapshot's other chunks still compressed, and the restore brings every byte back;
    the checkpoint logs what its chunks take stored, all raw and all compressed."""
    d = Daemon(tmp_path, ("--inject-min-mb", "1", "--store-raw-below", "40")).start()
    try:
        pid, report = workloads.start("weights.py", "24")
        digest = report.read_text().split()[1]
        with d.client() as c:
            snap = c.checkpoint(pid)
            wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
            codecs = [chunk.read_bytes()[4] for chunk in (d.state_dir / "chunks").rglob("*") if chunk.is_file()]
            assert codecs.count(codec.CODEC_RAW) >= 10 and codec.CODEC_PLANES not in codecs  # 12 chunks of weights
            assert codec.CODEC_ZSTD in codecs  # the interpreter's own memory: still compressed
            sizes = [json.loads(line) for line in d.log.read_text().splitlines() if '"ingest.policy_sizes"' in line]
            assert len(sizes) == 1 and sizes[0]["store_raw_below"] == 40 and sizes[0]["op"]
            assert sizes[0]["stored_bytes"] == snap.stored_bytes < sizes[0]["all_raw_bytes"]
            # the 24 MiB of weights would save about a third compressed
            assert snap.stored_bytes - sizes[0]["all_compressed_bytes"] > 0.25 * (24 << 20)
            c.restore(snap.id)
        assert ask(pid, report)[1] == digest
    finally:
        d.stop()
