"""The file pages a process tree had mapped in, recorded at checkpoint and read ahead at restore.

A restore reads from the tree's files, not only from the snapshot: CRIU maps
every file mapping again and writes the dumped (copied-on-write) pages of a
private one over its file pages, each write reading the file page first; once
resumed, the tree runs its libraries' code and reads their data again. With
the page cache dropped (a cold restore, or a snapshot prefetched into RAM
after the caches went) those are thousands of small synchronous reads.

``scan`` reads, for every file mapping of the tree, which of its pages are in
the page tables (/proc/PID/pagemap: present or swapped) and returns them as
file ranges, most needed first: the copied-on-write pages of private mappings
(CRIU reads their file pages), then the file's own pages; at most ``limit``
bytes. ``warm`` asks the kernel to read them ahead (POSIX_FADV_WILLNEED, in a
thread, while the restore goes on); ``read_in`` reads them, for a prefetch
that promises a restore without disk reads. Both are advice: a file that is
gone, changed or unreadable is skipped, never an error. Files under /dev and
deleted files are never recorded.
"""

from __future__ import annotations

import contextvars
import os
import re
import stat
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import structlog

log = structlog.get_logger()

PAGE = os.sysconf("SC_PAGE_SIZE")
# ranges of one file closer than this are read as one (the kernel reads ahead as much anyway)
MERGE_GAP = 64 << 10
# pagemap entries read per system call
_BATCH = 1 << 16
# byte 7 of a little-endian pagemap entry: bit 63 present, 62 swapped, 61 file page (or shared anonymous)
_COPIED = bytes(1 if b & 0xC0 and not b & 0x20 else 0 for b in range(256))
_FILE = bytes(1 if b & 0x80 and b & 0x20 else 0 for b in range(256))
_RUN = re.compile(rb"\x01+")

FileRange = tuple[str, int, int]  # path, offset, length


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    offset: int
    path: str
    private: bool


def mappings(pid: int) -> list[Mapping]:
    """The file mappings of ``pid`` worth reading ahead (regular files, not deleted, not under /dev)."""
    found = []
    with open(f"/proc/{pid}/maps", "rb") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) < 6 or parts[4] == b"0":
                continue
            path = os.fsdecode(parts[5].rstrip(b"\n"))
            if not path.startswith("/") or path.startswith("/dev/") or path.endswith(" (deleted)"):
                continue
            start, end = (int(x, 16) for x in parts[0].split(b"-"))
            found.append(Mapping(start, end, int(parts[2], 16), path, parts[1][3:4] == b"p"))
    return found


def _runs(pagemap: int, m: Mapping, table: bytes) -> Iterator[tuple[int, int]]:
    """(file offset, length) of the runs of pages of ``m`` that ``table`` selects."""
    first = m.start // PAGE
    pages = (m.end - m.start) // PAGE
    for done in range(0, pages, _BATCH):
        n = min(_BATCH, pages - done)
        entries = os.pread(pagemap, n * 8, (first + done) * 8)
        for run in _RUN.finditer(entries[7::8].translate(table)):
            yield m.offset + (done + run.start()) * PAGE, (run.end() - run.start()) * PAGE


def _merged(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for offset, length in sorted(ranges):
        if out and offset <= out[-1][0] + out[-1][1] + MERGE_GAP:
            out[-1][1] = max(out[-1][1], offset + length - out[-1][0])
        else:
            out.append([offset, length])
    return [(o, n) for o, n in out]


def scan(pids: Iterable[int], limit: int) -> list[FileRange]:
    """The tree's mapped-in file ranges, copied-on-write pages first, at most ``limit``
    bytes. A process that ended meanwhile is skipped."""
    copied: dict[str, list[tuple[int, int]]] = {}
    resident: dict[str, list[tuple[int, int]]] = {}
    for pid in pids:
        try:
            maps = mappings(pid)
            pagemap = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError):
            continue
        try:
            for m in maps:
                if m.private:
                    copied.setdefault(m.path, []).extend(_runs(pagemap, m, _COPIED))
                resident.setdefault(m.path, []).extend(_runs(pagemap, m, _FILE))
        finally:
            os.close(pagemap)
    chosen: list[FileRange] = []
    left = limit
    for kind in (copied, resident):
        for path, ranges in kind.items():
            for offset, length in _merged(ranges):
                if left <= 0:
                    return chosen
                length = min(length, left)
                chosen.append((path, offset, length))
                left -= length
    return chosen


def _by_file(ranges: Iterable[FileRange]) -> dict[str, list[tuple[int, int]]]:
    files: dict[str, list[tuple[int, int]]] = {}
    for path, offset, length in ranges:
        files.setdefault(path, []).append((offset, length))
    return files


def _open_regular(path: str) -> int:
    """A read-only fd of ``path`` if it is a regular file, else -1. The file is looked at
    through an O_PATH descriptor before it is opened, and opened through that very
    descriptor: a device node or FIFO put at a recorded path is never opened."""
    try:
        handle = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return -1
    try:
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            return -1
        return os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1
    finally:
        os.close(handle)


def _advise(ranges: list[FileRange]) -> None:
    asked = 0
    for path, spans in _by_file(ranges).items():
        fd = _open_regular(path)
        if fd < 0:
            continue
        try:
            for offset, length in spans:
                try:
                    os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
                    asked += length
                except OSError:
                    break
        finally:
            os.close(fd)
    log.info("filepages.warmed", ranges=len(ranges), bytes=asked)


def warm(ranges: list[FileRange]) -> threading.Thread | None:
    """Start reading ``ranges`` ahead in the background (a daemon thread that logs with the
    caller's context; None: nothing to do)."""
    if not ranges:
        return None
    thread = threading.Thread(target=contextvars.copy_context().run, args=(_advise, ranges), name="filepages-warm",
                              daemon=True)
    thread.start()
    return thread


def _read_file(item: tuple[str, list[tuple[int, int]]]) -> int:
    path, spans = item
    fd = _open_regular(path)
    if fd < 0:
        return 0
    buffer = bytearray(1 << 20)
    done = 0
    try:
        for offset, length in spans:
            end = offset + length
            while offset < end:
                n = os.preadv(fd, [memoryview(buffer)[: min(len(buffer), end - offset)]], offset)
                if n <= 0:
                    break
                offset += n
                done += n
    except OSError:
        pass
    finally:
        os.close(fd)
    return done


def read_in(ranges: list[FileRange], threads: int) -> int:
    """Read ``ranges`` into the page cache now, ``threads`` files at a time; bytes read."""
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="filepages") as pool:
        return sum(pool.map(_read_file, _by_file(ranges).items()))
