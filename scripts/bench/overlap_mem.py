"""Memory helpers of the overlap probe (overlap_probe.py): another process's
mappings and their growth, reading/writing its memory, finding known block
contents in it, a paced address-order writer, page-frame numbers and idle page
tracking. Nothing here needs a GPU; tests/test_overlap_probe.py runs it on a
plain CPU process.

The known contents: block i of ``block_bytes`` is int64 element k =
(k * MULT) ^ seed(i), so every chunk of a block has a distinct first word
(its "header") and can be found wherever the driver put it.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from snapd_daemon.host import memwrite

PAGE = 4096
MULT = 2654435761
PIECE = 16 << 20
PAGEMAP_PFN_MASK = (1 << 55) - 1
PAGEMAP_PRESENT = 1 << 63
# Paths of mappings that hold anonymous memory: none, the heap, named anonymous
# memory (prctl PR_SET_VMA_ANON_NAME), memfd and shared anonymous memory.
ANONYMOUS_PREFIXES = ("[heap]", "[anon:", "[anon_shmem:", "/memfd:", "/dev/zero")
IDLE_BITMAP = "/sys/kernel/mm/page_idle/bitmap"


def seed(block: int) -> int:
    """The per-block XOR seed; below 2**62 for up to 1024 blocks, never zero."""
    return ((block + 1) * 0x9E3779B1) << 20


def pattern(block: int, first: int, count: int) -> np.ndarray:
    """Elements first..first+count of block ``block`` (int64)."""
    return pattern_at(block, np.arange(first, first + count, dtype=np.int64))


def pattern_at(block: int, indices: np.ndarray) -> np.ndarray:
    """The elements of block ``block`` at ``indices`` (int64 array)."""
    return (indices * MULT) ^ np.int64(seed(block))


@dataclass(frozen=True)
class Region:
    """One line of /proc/PID/smaps: [start, end), permissions, path ('' = anonymous), Rss bytes."""

    start: int
    end: int
    perms: str
    path: str
    rss: int

    @property
    def size(self) -> int:
        return self.end - self.start


def parse_smaps(text: str) -> list[Region]:
    """The regions of an smaps text, in address order (Rss 0 where a region has no Rss line)."""
    regions: list[Region] = []
    for line in text.splitlines():
        fields = line.split(None, 5)
        if fields and "-" in fields[0] and len(fields) >= 5 and not fields[0].endswith(":"):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            regions.append(Region(start, end, fields[1], fields[5].strip() if len(fields) > 5 else "", 0))
        elif fields and fields[0] == "Rss:" and regions:
            last = regions[-1]
            regions[-1] = Region(last.start, last.end, last.perms, last.path, int(fields[1]) * 1024)
    return regions


def read_regions(pid: int) -> list[Region]:
    """pid's mappings now, from /proc/PID/smaps."""
    with open(f"/proc/{pid}/smaps", encoding="utf-8", errors="replace") as smaps:
        return parse_smaps(smaps.read())


def _subtract(start: int, end: int, holes: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    pieces, cursor = [], start
    for hole_start, hole_end in sorted(holes):
        if hole_end <= cursor or hole_start >= end:
            continue
        if hole_start > cursor:
            pieces.append((cursor, hole_start))
        cursor = max(cursor, hole_end)
    if cursor < end:
        pieces.append((cursor, end))
    return pieces


def anonymous(region: Region) -> bool:
    """Whether region is anonymous memory (no file behind it but memfd/zero)."""
    return region.path == "" or region.path.startswith(ANONYMOUS_PREFIXES)


def grown_ranges(before: Sequence[Region], after: Sequence[Region], min_bytes: int) -> list[tuple[int, int]]:
    """Address ranges of anonymous read-write memory in ``after`` that were not
    anonymous read-write memory in ``before`` (new or widened mappings, or
    former PROT_NONE reservations), plus whole unchanged mappings whose Rss grew
    by ``min_bytes`` or more; ranges under ``min_bytes``, and those of mappings
    with no resident page (reservations, which hold no data), are dropped. Sorted."""
    old = [(r.start, r.end) for r in before if anonymous(r) and r.perms.startswith("rw")]
    same = {(r.start, r.end, r.perms, r.path): r.rss for r in before}
    found: set[tuple[int, int]] = set()
    for region in after:
        if not anonymous(region) or not region.perms.startswith("rw") or region.rss == 0:
            continue
        found.update(p for p in _subtract(region.start, region.end, old) if p[1] - p[0] >= min_bytes)
        key = (region.start, region.end, region.perms, region.path)
        if key in same and region.rss - same[key] >= min_bytes:
            found.add((region.start, region.end))
    return sorted(found)


def still_mapped(ranges: Sequence[tuple[int, int]], regions: Sequence[Region]) -> list[tuple[int, int]]:
    """Those of ranges that lie wholly inside one anonymous read-write mapping of regions."""
    return [(s, e) for s, e in ranges
            if any(r.start <= s and e <= r.end and anonymous(r) and r.perms.startswith("rw") for r in regions)]


def merge(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """ranges sorted, with overlapping or touching ones joined."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.restype = ctypes.c_int
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def _pieces(ranges: Sequence[tuple[int, int]], size: int) -> list[tuple[int, int, int]]:
    """(address, length, offset in the concatenation) of ranges cut into pieces of at most size."""
    out, offset = [], 0
    for start, end in ranges:
        for address in range(start, end, size):
            length = min(size, end - address)
            out.append((address, length, offset))
            offset += length
    return out


def read_ranges(pid: int, ranges: Sequence[tuple[int, int]], threads: int, into: bytearray | None = None) -> bytearray:
    """The bytes of ranges in pid, concatenated in the given order (``into`` is
    reused when it has exactly that size); raises OSError naming the address."""
    total = sum(end - start for start, end in ranges)
    buf = into if into is not None and len(into) == total else bytearray(total)
    if total == 0:
        return buf
    view = memoryview(buf)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda p: memwrite.read_into(pid, p[0], view[p[2]: p[2] + p[1]]), _pieces(ranges, PIECE)))
    return buf


@dataclass(frozen=True)
class Run:
    """address-contiguous located bytes: ``length`` bytes at ``address`` in the
    target, held at ``offset`` of the probe's read buffer; ``chunks`` lists the
    (block, chunk) pairs it holds, in address order."""

    address: int
    length: int
    offset: int
    chunks: tuple[tuple[int, int], ...]


SAMPLES = 64


def locate(buf: bytearray, ranges: Sequence[tuple[int, int]], blocks: int, block_bytes: int,
           chunk_bytes: int) -> list[Run]:
    """Find every chunk of every block in buf (the concatenated bytes of
    ranges, page-aligned), checking each candidate at SAMPLES words spread over it
    (its first and last included: a full comparison of every chunk took 18 s of a
    4 GiB run on the H100); chunks that follow each other in both address and
    content are merged into one Run."""
    per = chunk_bytes // 8
    sample = np.unique(np.linspace(0, per - 1, SAMPLES).astype(np.int64))
    chunks_per_block = block_bytes // chunk_bytes
    keys: dict[int, list[tuple[int, int]]] = {}  # chunk headers may collide: each lists its chunks
    for i in range(blocks):
        for j in range(chunks_per_block):
            keys.setdefault(int(pattern(i, j * per, 1)[0]), []).append((i, j))
    words = np.frombuffer(buf, dtype=np.int64)
    page_offsets = np.concatenate([np.arange(off, off + length - chunk_bytes + 1, PAGE, dtype=np.int64)
                                   for _, length, off in _pieces(ranges, 1 << 62)] or [np.zeros(0, np.int64)])
    heads = words[page_offsets // 8]
    hits = page_offsets[np.isin(heads, np.fromiter(keys, dtype=np.int64, count=len(keys)))]
    address_of = _address_map(ranges)
    found: list[tuple[int, int, int, int]] = []
    for offset in hits.tolist():
        for i, j in keys[int(words[offset // 8])]:
            if np.array_equal(words[offset // 8 + sample], pattern_at(i, j * per + sample)):
                found.append((address_of(offset), offset, i, j))
    runs: list[Run] = []
    for address, offset, i, j in sorted(found):
        last = runs[-1] if runs else None
        if (last and last.address + last.length == address and last.offset + last.length == offset
                and last.chunks[-1] == (i, j - 1)):
            runs[-1] = Run(last.address, last.length + chunk_bytes, last.offset, (*last.chunks, (i, j)))
        else:
            runs.append(Run(address, chunk_bytes, offset, ((i, j),)))
    return runs


def _address_map(ranges: Sequence[tuple[int, int]]):
    starts = np.array([off for _, _, off in _pieces(ranges, 1 << 62)], dtype=np.int64)
    addresses = [start for start, _ in ranges]

    def address_of(offset: int) -> int:
        k = int(np.searchsorted(starts, offset, side="right")) - 1
        return addresses[k] + offset - int(starts[k])
    return address_of


def wrong_positions(runs: Sequence[Run], wrong: Sequence[int], chunks_per_block: int, bins: int) -> dict[str, object]:
    """Where the wrong chunks (numbered block * chunks_per_block + chunk) lie in
    the located host copy, in address order: the first and last as fractions of
    it, how many were not located, and the share wrong in each of ``bins`` equal
    parts. Empty if none of them was located."""
    position: dict[int, int] = {}
    for run in sorted(runs, key=lambda r: r.address):
        for block, chunk in run.chunks:
            position[block * chunks_per_block + chunk] = len(position)
    spots = sorted(position[w] for w in wrong if w in position)
    if not spots:
        return {}
    total = len(position)
    wrong_in, all_in = [0] * bins, [0] * bins
    for spot in spots:
        wrong_in[spot * bins // total] += 1
    for place in range(total):
        all_in[place * bins // total] += 1
    return {"wrong_first_at": round(spots[0] / total, 4), "wrong_last_at": round(spots[-1] / total, 4),
            "wrong_unlocated": len(wrong) - len(spots),
            f"wrong_share_by_part_of_{bins}": [round(w / a, 3) if a else None for w, a in zip(wrong_in, all_in)]}


MADV_DONTNEED = 4


def drop(ranges: Sequence[tuple[int, int]]) -> str | None:
    """In THIS process: madvise(MADV_DONTNEED) each (address, length), so the
    pages are no longer present (the next read sees zeros, the next write a new
    page), as in a region CRIU restored without its pages. None, or the error."""
    for address, length in ranges:
        if _libc.madvise(address, length, MADV_DONTNEED) != 0:
            err = ctypes.get_errno()
            return f"madvise({address:#x}, {length}, MADV_DONTNEED): {os.strerror(err)}"
    return None


def zero_runs(pid: int, runs: Sequence[Run], threads: int) -> None:
    """Overwrite every run in pid with zeros (process_vm_writev)."""
    zeros = bytes(PIECE)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda p: memwrite.write(pid, p[0], memoryview(zeros)[: p[1]]),
                      _pieces([(r.address, r.address + r.length) for r in runs], PIECE)))


class PacedWriter:
    """Refills runs in pid from buf in address order, pieces of ``piece`` bytes
    handed out in order to ``threads`` threads, at most ``rate`` bytes/s
    overall (0 = as fast as it goes). ``watermark()`` is the number of bytes of
    the address-ordered prefix already written."""

    def __init__(self, pid: int, buf: bytearray, runs: Sequence[Run], threads: int, piece: int, rate: float) -> None:
        ordered = sorted(runs, key=lambda r: r.address)
        self._pieces = [(r.address + k, min(piece, r.length - k), r.offset + k)
                        for r in ordered for k in range(0, r.length, piece)]
        self._due = list(itertools.accumulate((p[1] for p in self._pieces), initial=0))
        self.total = self._due[-1]
        self._pid, self._view, self._rate = pid, memoryview(buf), rate
        self._done = [False] * len(self._pieces)
        self._prefix = 0
        self._next = itertools.count()
        self._lock = threading.Lock()
        self.errors: list[str] = []
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(threads)]
        self.started = self.finished = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        while (k := next(self._next)) < len(self._pieces) and not self.errors:
            address, length, offset = self._pieces[k]
            if self._rate:
                time.sleep(max(0.0, self.started + self._due[k] / self._rate - time.monotonic()))
            try:
                memwrite.write(self._pid, address, self._view[offset: offset + length])
            except OSError as exc:
                self.errors.append(str(exc))
            with self._lock:
                self._done[k] = True
                while self._prefix < len(self._done) and self._done[self._prefix]:
                    self._prefix += 1
                if self._prefix == len(self._done):
                    self.finished = time.monotonic()

    def watermark(self) -> int:
        with self._lock:
            return self._due[self._prefix]

    def join(self) -> None:
        for thread in self._threads:
            thread.join()


def pfns(pid: int, addresses: Sequence[int]) -> np.ndarray:
    """The page frame number behind each address in pid (0 where not present or
    hidden: PFNs need CAP_SYS_ADMIN)."""
    out = np.zeros(len(addresses), dtype=np.int64)
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        for k, address in enumerate(addresses):
            entry = int.from_bytes(os.pread(fd, 8, address // PAGE * 8), "little")
            out[k] = entry & PAGEMAP_PFN_MASK if entry & PAGEMAP_PRESENT else 0
    finally:
        os.close(fd)
    return out


def idle_tracking_unavailable() -> str | None:
    """Why idle page tracking cannot be used here, or None if it can."""
    if not os.path.exists(IDLE_BITMAP):
        return f"{IDLE_BITMAP} is absent (kernel built without CONFIG_IDLE_PAGE_TRACKING)"
    if not os.access(IDLE_BITMAP, os.R_OK | os.W_OK):
        return f"{IDLE_BITMAP} is not readable and writable (needs root)"
    return None


class IdleTracker:
    """Marks a fixed set of page frames idle and tells which were accessed since."""

    def __init__(self, frames: np.ndarray) -> None:
        self.frames = frames
        self._words = np.unique(frames // 64)
        breaks = np.flatnonzero(np.diff(self._words) != 1) + 1
        self._spans = [(int(s[0]), len(s)) for s in np.split(self._words, breaks) if len(s)]
        self._fd = os.open(IDLE_BITMAP, os.O_RDWR)

    def mark_idle(self) -> None:
        bits: dict[int, int] = {}
        for frame in self.frames.tolist():
            bits[frame // 64] = bits.get(frame // 64, 0) | 1 << (frame % 64)
        for word, value in bits.items():
            os.pwrite(self._fd, value.to_bytes(8, "little"), word * 8)

    def accessed(self) -> np.ndarray:
        """One bool per frame: True where its idle bit was cleared (the page was used)."""
        values = np.concatenate([np.frombuffer(os.pread(self._fd, n * 8, w * 8), dtype=np.uint64)
                                 for w, n in self._spans])
        word_values = values[np.searchsorted(self._words, self.frames // 64)]
        return ((word_values >> (self.frames % 64).astype(np.uint64)) & np.uint64(1)) == 0

    def close(self) -> None:
        os.close(self._fd)


def userfaultfd_report() -> dict[str, object]:
    """Whether userfaultfd could serve the host copy on demand, from what this host says."""
    def read(path: str) -> str | None:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().strip()
        except OSError:
            return None
    return {
        "kernel": os.uname().release,
        "unprivileged_userfaultfd": read("/proc/sys/vm/unprivileged_userfaultfd"),
        "dev_userfaultfd": os.path.exists("/dev/userfaultfd"),
        "note": ("a uffd registers ranges of the mm of the process that creates it, so it must be made inside "
                 "the restored process (CRIU's lazy-pages does so from its restorer and hands the fd out); a "
                 "writer outside cannot. Driver reads through get_user_pages or the CPU both fault into "
                 "userfaultfd missing-page handling; only the experiments above tell whether the driver "
                 "reads through the page tables at all."),
    }
