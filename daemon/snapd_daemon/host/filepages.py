"""The file pages a process tree had mapped in, recorded at checkpoint and read ahead at restore.

A restore reads from the tree's files, not only from the snapshot: CRIU maps
every file mapping again and writes the dumped (copied-on-write) pages of a
private one over its file pages, each write reading the file page first; once
resumed, the tree runs its libraries' code and reads their data again. With
the page cache dropped (a cold restore, or a snapshot prefetched into RAM
after the caches went) those are thousands of small synchronous reads.

``scan`` reads, for every file mapping of the tree, which of its pages are in
the page tables (/proc/PID/pagemap: present or swapped) and returns them per
file, most needed first: the copied-on-write pages of private mappings (CRIU
reads their file pages), then the pages of executable mappings, then the
rest; each range once, at most ``limit`` bytes in all. ``warm`` asks the
kernel to read them ahead (POSIX_FADV_WILLNEED, in a thread, while the restore
goes on); ``read_in`` reads them, for a prefetch that promises a restore
without disk reads. Both are advice: a file is recorded as the mapping's own
file says (/proc/PID/map_files: device, inode, size, modification time), and
read only while its path, not followed if a symbolic link, still names a
regular file that matches all four (so a changed, moved or substituted file,
a device node or FIFO, or a file of another mount namespace under the same
name is skipped, never an error), and never past its end. Files under /dev
and deleted files are never recorded.
"""

from __future__ import annotations

import contextvars
import os
import re
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import structlog

from snapd_daemon.host import procmaps
from snapd_daemon.util.buffers import PerThread, read_fd

log = structlog.get_logger()

PAGE = os.sysconf("SC_PAGE_SIZE")
# ranges of one file closer than this are read as one (the kernel reads ahead as much anyway)
MERGE_GAP = 64 << 10
# pagemap entries read per system call
_BATCH = 1 << 16
_READ_PIECE = 1 << 20  # bytes one read of a recorded file asks for
# byte 7 of a little-endian pagemap entry: bit 63 present, 62 swapped, 61 file page (or shared anonymous)
_COPIED = bytes(1 if b & 0xC0 and not b & 0x20 else 0 for b in range(256))
_FILE = bytes(1 if b & 0x80 and b & 0x20 else 0 for b in range(256))
_RUN = re.compile(rb"\x01+")
Ranges = list[tuple[int, int]]  # (offset, length), sorted, disjoint


@dataclass(frozen=True)
class FileId:
    """What a file was when it was recorded."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileId:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class FilePages:
    """Ranges (offset, length) of the file ``id`` at ``path``."""

    path: str
    id: FileId
    ranges: tuple[tuple[int, int], ...]

    @property
    def size(self) -> int:
        return sum(n for _, n in self.ranges)

    @classmethod
    def parse(cls, items: Any) -> list[FilePages]:
        """A manifest's ``file_pages``; entries that are not well formed are dropped (this is advice)."""
        parsed = []
        for item in items if isinstance(items, list) else []:
            try:
                path, ident = item["path"], FileId(**{k: int(v) for k, v in item["id"].items()})
                ranges = tuple((int(r[0]), int(r[1])) for r in item["ranges"])
            except (TypeError, KeyError, ValueError, IndexError, AttributeError):
                continue
            if isinstance(path, str) and path.startswith("/") and "\0" not in path and ident.inode > 0 \
                    and all(o >= 0 and n > 0 for o, n in ranges):
                parsed.append(cls(path, ident, ranges))
        return parsed


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    offset: int
    path: str
    id: FileId
    private: bool
    executable: bool


def mappings(pid: int) -> list[Mapping]:
    """The file mappings of ``pid`` worth reading ahead (regular files, not deleted, not under
    /dev), each with the identity of the file it maps (a mapping gone meanwhile is left out)."""
    found = []
    for e in procmaps.read(pid):
        if not e.inode or not e.path.startswith("/") or e.path.startswith("/dev/") or e.path.endswith(" (deleted)"):
            continue
        try:
            st = os.stat(f"/proc/{pid}/map_files/{e.start:x}-{e.end:x}")
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            found.append(Mapping(e.start, e.end, e.offset, e.path, FileId.of(st), e.private, e.executable))
    return found


def _runs(pagemap: int, m: Mapping) -> tuple[Ranges, Ranges]:
    """(copied-on-write, file) page runs of ``m`` as (file offset, length), pagemap read once."""
    copied: Ranges = []
    present: Ranges = []
    first = m.start // PAGE
    pages = (m.end - m.start) // PAGE
    for done in range(0, pages, _BATCH):
        n = min(_BATCH, pages - done)
        flags = os.pread(pagemap, n * 8, (first + done) * 8)[7::8]
        for table, runs in ((_COPIED, copied), (_FILE, present)):
            if table is _COPIED and not m.private:
                continue
            runs.extend((m.offset + (done + r.start()) * PAGE, (r.end() - r.start()) * PAGE)
                        for r in _RUN.finditer(flags.translate(table)))
    return copied, present


def _merged(ranges: Iterable[tuple[int, int]]) -> Ranges:
    out: list[list[int]] = []
    for offset, length in sorted(ranges):
        if out and offset <= out[-1][0] + out[-1][1] + MERGE_GAP:
            out[-1][1] = max(out[-1][1], offset + length - out[-1][0])
        else:
            out.append([offset, length])
    return [(o, n) for o, n in out]


def _minus(ranges: Ranges, taken: Ranges) -> Ranges:
    """The parts of ``ranges`` outside ``taken`` (both sorted and disjoint)."""
    out: Ranges = []
    i = 0
    for offset, length in ranges:
        pos, end = offset, offset + length
        while i < len(taken) and taken[i][0] + taken[i][1] <= pos:
            i += 1
        j = i
        while pos < end and j < len(taken) and taken[j][0] < end:
            if taken[j][0] > pos:
                out.append((pos, taken[j][0] - pos))
            pos = max(pos, taken[j][0] + taken[j][1])
            j += 1
        if pos < end:
            out.append((pos, end - pos))
    return out


def scan(pids: Iterable[int], limit: int) -> list[FilePages]:
    """The tree's mapped-in file ranges, most needed first, at most ``limit`` bytes. A
    process that ended meanwhile, or whose pagemap cannot be read, is skipped."""
    tiers: tuple[dict[tuple[str, FileId], Ranges], ...] = ({}, {}, {})
    for pid in pids:
        try:
            maps = mappings(pid)
            pagemap = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            for m in maps:
                copied, present = _runs(pagemap, m)
                key = (m.path, m.id)
                tiers[0].setdefault(key, []).extend(copied)
                tiers[1 if m.executable else 2].setdefault(key, []).extend(present)
        except OSError:
            continue
        finally:
            os.close(pagemap)
    chosen: list[FilePages] = []
    taken: dict[tuple[str, FileId], Ranges] = {}
    left = limit
    for tier in tiers:
        for key, ranges in tier.items():
            keep: Ranges = []
            for offset, length in _minus(_merged(ranges), taken.get(key, [])):
                if left <= 0:
                    break
                keep.append((offset, min(length, left)))
                left -= keep[-1][1]
            if keep:
                chosen.append(FilePages(*key, tuple(keep)))
                taken[key] = _merged([*taken.get(key, []), *keep])
    return chosen


def capped(files: list[FilePages], limit: int) -> Iterator[FilePages]:
    """``files`` up to ``limit`` bytes in all (a snapshot recorded, imported or pulled with a
    higher limit is read ahead no further than this daemon's)."""
    left = limit
    for f in files:
        if left <= 0:
            return
        keep = []
        for offset, length in f.ranges:
            if left <= 0:
                break
            keep.append((offset, min(length, left)))
            left -= keep[-1][1]
        yield FilePages(f.path, f.id, tuple(keep))


def _open_recorded(f: FilePages) -> tuple[int, int]:
    """(read-only fd, size) of the file ``f`` records, or (-1, 0) unless its path (not followed
    if a symbolic link) names a regular file that is still the recorded one. Looked at
    through an O_PATH descriptor and opened through that very descriptor."""
    try:
        handle = os.open(f.path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (OSError, ValueError):
        return -1, 0
    try:
        st = os.fstat(handle)
        if not stat.S_ISREG(st.st_mode) or FileId.of(st) != f.id:
            return -1, 0
        return os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_CLOEXEC), st.st_size
    except OSError:
        return -1, 0
    finally:
        os.close(handle)


def _within(ranges: Iterable[tuple[int, int]], size: int) -> Iterator[tuple[int, int]]:
    for offset, length in ranges:
        if offset < size:
            yield offset, min(length, size - offset)


def _advise(files: list[FilePages]) -> None:
    asked = 0
    for f in files:
        fd, size = _open_recorded(f)
        if fd < 0:
            continue
        try:
            for offset, length in _within(f.ranges, size):
                os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
                asked += length
        except OSError:
            pass
        finally:
            os.close(fd)
    log.info("filepages.warmed", files=len(files), bytes=asked)


def warm(files: list[FilePages], limit: int) -> threading.Thread | None:
    """Start reading up to ``limit`` bytes of ``files`` ahead in the background (a daemon
    thread that logs with the caller's context; None: nothing to do)."""
    chosen = list(capped(files, limit))
    if not chosen:
        return None
    thread = threading.Thread(target=contextvars.copy_context().run, args=(_advise, chosen), name="filepages-warm",
                              daemon=True)
    thread.start()
    return thread


def _read_file(f: FilePages, buffers: PerThread, deadline: float) -> int:
    fd, size = _open_recorded(f)
    if fd < 0:
        return 0
    done = 0
    try:
        for offset, length in _within(f.ranges, size):
            end = offset + length
            while offset < end and time.monotonic() < deadline:
                n = read_fd(fd, buffers.buffers.stored(min(_READ_PIECE, end - offset)), offset)
                if n <= 0:
                    break
                offset += n
                done += n
    except OSError:
        pass
    finally:
        os.close(fd)
    return done


def read_in(files: list[FilePages], limit: int, threads: int, seconds: float) -> int:
    """Read up to ``limit`` bytes of ``files`` into the page cache, ``threads`` files at a time,
    for at most about ``seconds`` (a read that hangs, on a network file system say, is left
    to finish in the background); bytes read."""
    deadline = time.monotonic() + seconds
    buffers = PerThread()
    pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="filepages")
    try:
        futures = [pool.submit(_read_file, f, buffers, deadline) for f in capped(files, limit)]
        finished, _ = wait(futures, timeout=seconds + 1)
        return sum(f.result() for f in finished)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
