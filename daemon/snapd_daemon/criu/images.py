"""Reading CRIU image files: the page maps that say which bytes of a pages
image belong to which virtual addresses, and the namespaces a tree had of its own.

Format: two little-endian u32 magics (CRIU's common magic, then the image's
own), then entries of ``u32 length`` + protobuf message.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from snapd_daemon.criu import images_pb2

PAGE_SIZE = 4096
IMG_COMMON_MAGIC = 0x54564319
PAGEMAP_MAGIC = 0x56084025
MM_MAGIC = 0x57492820
FILES_MAGIC = 0x56303138
FILES_NAME = "files.img"
INVENTORY_MAGIC = 0x58313116  # the inventory alone has no common magic before its own
IDS_MAGIC = 0x54432030
MADV_HUGEPAGE = 14
PE_PARENT = 1
PE_PRESENT = 4
PAGEMAP_NAME = re.compile(r"pagemap-(\d+)\.img")


class ImageFormatError(Exception):
    """An image file does not have the layout CRIU writes."""


@dataclass(frozen=True)
class PageRun:
    """``nr_pages`` pages at ``vaddr`` whose bytes sit at ``offset`` in the pages image."""

    vaddr: int
    nr_pages: int
    offset: int

    @property
    def length(self) -> int:
        return self.nr_pages * PAGE_SIZE


@dataclass(frozen=True)
class PagesImage:
    """One process's pages image and the runs of pages stored in it, in file order."""

    pid: int
    pages_id: int
    pages_file: str
    runs: tuple[PageRun, ...]


def _check_magics(data: bytes, expected_magic: int, path: Path) -> None:
    common, magic = struct.unpack_from("<II", data, 0)
    if common != IMG_COMMON_MAGIC or magic != expected_magic:
        raise ImageFormatError(f"{path}: magic {common:#x}/{magic:#x}, expected {IMG_COMMON_MAGIC:#x}/{expected_magic:#x}")


def _complete(data: bytes, pos: int) -> Iterator[tuple[bytes, int]]:
    """The entries of ``data`` from ``pos`` on that are whole, each with the offset after it."""
    while pos + 4 <= len(data):
        (size,) = struct.unpack_from("<I", data, pos)
        if pos + 4 + size > len(data):
            return
        yield data[pos + 4 : pos + 4 + size], pos + 4 + size
        pos += 4 + size


def _entries(data: bytes, expected_magic: int, path: Path) -> Iterator[bytes]:
    """The messages of an image file."""
    if len(data) < 8:
        raise ImageFormatError(f"{path}: {len(data)} bytes, too short for an image header")
    _check_magics(data, expected_magic, path)
    end = 8
    for message, end in _complete(data, 8):
        yield message
    if end != len(data):
        raise ImageFormatError(f"{path}: the entry at offset {end} runs past the end")


def write_image(path: Path, magic: int, messages: list[bytes]) -> None:
    """Write an image file: the two magics, then each message with its u32 length."""
    parts = [struct.pack("<II", IMG_COMMON_MAGIC, magic)]
    for msg in messages:
        parts += [struct.pack("<I", len(msg)), msg]
    path.write_bytes(b"".join(parts))


@dataclass(frozen=True)
class Vma:
    start: int
    end: int
    prot: int
    flags: int
    status: int


def read_vmas(path: Path) -> list[Vma]:
    """The VMAs of one process from its ``mm-<pid>.img``."""
    entry = images_pb2.MmEntry.FromString(next(_entries(path.read_bytes(), MM_MAGIC, path)))
    return [Vma(v.start, v.end, v.prot, v.flags, v.status) for v in entry.vmas]


def advise_hugepages(path: Path, regions: list[tuple[int, int]]) -> None:
    """Mark the VMAs [start, end) in ``mm-<pid>.img`` MADV_HUGEPAGE (vma_entry.madv bit
    14), which CRIU re-applies on restore: the regions snapd fills then get huge
    pages (when THP is "madvise"), without touching the host's THP setting. Fields
    snapd does not model are kept as they were."""
    data = path.read_bytes()
    entries = list(_entries(data, MM_MAGIC, path))
    mm = images_pb2.MmEntry.FromString(entries[0])
    wanted = set(regions)
    for vma in mm.vmas:
        if (vma.start, vma.end) in wanted:
            vma.madv |= 1 << MADV_HUGEPAGE
    write_image(path, MM_MAGIC, [mm.SerializeToString(), *entries[1:]])


def adjust_files(path: Path, append_pipes: set[int]) -> list[str]:
    """Rewrite ``files.img`` for a restore; returns the names of the files unpinned.

    - The recorded size of every regular file open write-only is dropped. CRIU
      refuses a file whose size changed (except O_APPEND ones): an output file
      (`server > log`) that the original, left running, or the restored process
      went on writing. A write-only file holds nothing the process read. When
      its size did change, the restored fd goes on at the file's end now (not
      over what was written since, nor past the end of a truncated file).
    - The write ends of the pipes in ``append_pipes`` (inodes) get O_APPEND.
      CRIU reopens an inherited pipe's replacement with the pipe's flags, so a
      restore log handed in for it is then appended to, not written from 0.

    Other entries, and every field snapd does not model, are kept as they were.
    """
    data = path.read_bytes()
    entries = [images_pb2.FileEntry.FromString(e) for e in _entries(data, FILES_MAGIC, path)]
    outputs = []
    changed = False
    for entry in entries:
        reg, pipe = entry.reg, entry.pipe
        if entry.HasField("reg") and reg.HasField("size") and reg.flags & os.O_ACCMODE == os.O_WRONLY:
            try:
                now = os.stat(reg.name).st_size
            except OSError:  # not visible from here (another mount namespace): CRIU decides
                continue
            if now != reg.size:
                reg.pos = now
            reg.ClearField("size")
            outputs.append(reg.name)
            changed = True
        if entry.HasField("pipe") and pipe.pipe_id in append_pipes and pipe.flags & os.O_ACCMODE == os.O_WRONLY:
            pipe.flags |= os.O_APPEND
            changed = True
    if changed:
        write_image(path, FILES_MAGIC, [e.SerializeToString() for e in entries])
    return outputs


def _present_run(message: bytes, offset: int) -> PageRun | None:
    """The run of pages a pagemap entry puts at ``offset`` of the pages image; None for
    pages it does not store there (in a parent image, or holes)."""
    e = images_pb2.PagemapEntry.FromString(message)
    nr = e.nr_pages if e.HasField("nr_pages") else e.compat_nr_pages
    flags = e.flags if e.HasField("flags") else (PE_PARENT if e.in_parent else PE_PRESENT)
    return PageRun(vaddr=e.vaddr, nr_pages=nr, offset=offset) if flags & PE_PRESENT else None


def _pid(path: Path) -> int:
    match = PAGEMAP_NAME.fullmatch(path.name)
    if not match:
        raise ImageFormatError(f"{path}: not a pagemap image name")
    return int(match.group(1))


def read_pagemap(path: Path) -> PagesImage:
    """Parse ``pagemap-<pid>.img``: which pages file, and where each present run lies in it."""
    pid = _pid(path)
    entries = _entries(path.read_bytes(), PAGEMAP_MAGIC, path)
    first = next(entries, None)
    if first is None:
        raise ImageFormatError(f"{path}: no pagemap head")
    head = images_pb2.PagemapHead.FromString(first)
    runs = []
    offset = 0
    for message in entries:
        run = _present_run(message, offset)
        if run is not None:
            runs.append(run)
            offset += run.length
    return PagesImage(pid=pid, pages_id=head.pages_id, pages_file=f"pages-{head.pages_id}.img", runs=tuple(runs))


class GrowingPagemap:
    """A pagemap image CRIU is still writing, read on from where the last ``read_new``
    stopped: a poll parses the entries completed since the one before, not the whole
    file again (at 18 GB of pages, 18,000 entries, that cost 57 ms a poll on the CI VM,
    under the GIL the ingest's threads need)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pid = _pid(path)
        self.pages_file: str | None = None  # known once the head is written
        self._consumed = 0  # bytes of the file parsed: the magics, then whole entries
        self._offset = 0  # bytes of the pages image the present runs so far take

    def read_new(self) -> list[PageRun]:
        """The present runs whose entries were completed since the last call."""
        with open(self.path, "rb") as f:
            f.seek(self._consumed)
            data = f.read()
        pos = 0
        if self._consumed == 0:
            if len(data) < 8:
                return []
            _check_magics(data, PAGEMAP_MAGIC, self.path)
            pos = 8
        runs = []
        for message, pos in _complete(data, pos):
            if self.pages_file is None:
                self.pages_file = f"pages-{images_pb2.PagemapHead.FromString(message).pages_id}.img"
                continue
            run = _present_run(message, self._offset)
            if run is not None:
                runs.append(run)
                self._offset += run.length
        self._consumed += pos
        return runs


def write_pagemap(path: Path, pages_id: int, runs: list[tuple[int, int]]) -> None:
    """Write a pagemap of present pages: ``runs`` are (vaddr, bytes), in pages-file order."""
    head = images_pb2.PagemapHead(pages_id=pages_id).SerializeToString()
    entries = [
        images_pb2.PagemapEntry(
            vaddr=vaddr, compat_nr_pages=0, flags=PE_PRESENT, nr_pages=length // PAGE_SIZE
        ).SerializeToString()
        for vaddr, length in runs
    ]
    write_image(path, PAGEMAP_MAGIC, [head, *entries])


def pages_images(images_dir: Path) -> list[PagesImage]:
    """Every process's pages image in a dump directory (shared-memory page maps,
    ``pagemap-shmem-<inode>.img``, are not per process and are left out)."""
    return [read_pagemap(p) for p in sorted(images_dir.glob("pagemap-*.img")) if PAGEMAP_NAME.fullmatch(p.name)]


def own_namespaces(images_dir: Path, root_pid: int) -> set[str]:
    """The namespaces ("net", "uts", "ipc", "mnt", "pid") the tree's root (``root_pid`` as the
    images name it) did not share with CRIU at dump: those CRIU makes anew at restore."""
    inventory_path, ids_path = images_dir / "inventory.img", images_dir / f"ids-{root_pid}.img"
    data = inventory_path.read_bytes()
    if len(data) < 4 or struct.unpack_from("<I", data)[0] != INVENTORY_MAGIC:
        raise ImageFormatError(f"{inventory_path}: not a CRIU inventory image")
    first = next(_complete(data, 4), None)
    if first is None:
        raise ImageFormatError(f"{inventory_path}: no inventory entry")
    dumper = images_pb2.InventoryEntry.FromString(first[0]).root_ids
    root = images_pb2.TaskKobjIdsEntry.FromString(next(_entries(ids_path.read_bytes(), IDS_MAGIC, ids_path)))
    return {kind for kind in ("net", "uts", "ipc", "mnt", "pid")
            if getattr(root, f"{kind}_ns_id") != getattr(dumper, f"{kind}_ns_id")}
