"""userfaultfd(2) from the side that serves the faults: the fill ioctls and the event reader.

A uffd names one address space (mm); whoever holds the fd may fill that mm's
registered, missing pages and reads its faults and non-cooperative events
(fork, mremap, munmap, madvise). Nothing here knows about snapd.

- ``copy`` / ``zeropage`` fill only missing pages: EEXIST where a page is present,
  ENOENT where the range is no longer registered (unmapped, moved), EAGAIN while
  an event is pending (read the events, then retry), ESRCH when the mm is gone.
  A successful fill wakes the threads waiting on its range.
- ``read`` returns the messages waiting (the fd is non-blocking); the thread that
  caused an event is held until its message is read.
- Closing the last fd unregisters everything and wakes every waiter: a missing
  page is an ordinary zero page from then on.

The ioctls go through ctypes' libc ``ioctl``, which releases the GIL while the
kernel copies.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from typing import NamedTuple

PAGE = 4096
_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.restype = ctypes.c_int
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]

UFFDIO_WAKE = 0x8010AA02
UFFDIO_COPY = 0xC028AA03
UFFDIO_ZEROPAGE = 0xC020AA04
_MSG = 32  # sizeof(struct uffd_msg)


class _Copy(ctypes.Structure):
    _fields_ = [("dst", ctypes.c_uint64), ("src", ctypes.c_uint64), ("len", ctypes.c_uint64),
                ("mode", ctypes.c_uint64), ("copy", ctypes.c_int64)]


class _Zeropage(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("len", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("zeropage", ctypes.c_int64)]


class _Range(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class FillError(OSError):
    """A fill stopped at ``address``: ``errno`` says why (EEXIST, ENOENT, EAGAIN, ESRCH, ...)."""

    def __init__(self, err: int, call: str, address: int) -> None:
        super().__init__(err, f"{call} at {address:#x}: {os.strerror(err)}")
        self.address = address


def _fill(fd: int, request: int, arg: ctypes.Structure, done: str, call: str, start: int, length: int) -> None:
    """Repeat the fill ioctl over what remains until all ``length`` bytes are done."""
    while length > 0:
        rc = _libc.ioctl(fd, request, ctypes.addressof(arg))
        moved = getattr(arg, done)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if moved > 0:  # partial: go on after what was done
            start, length = start + moved, length - moved
            _advance(arg, moved)
            continue
        raise FillError(err if err else (-moved if moved < 0 else errno.EIO), call, start)


def _advance(arg: ctypes.Structure, n: int) -> None:
    if isinstance(arg, _Copy):
        arg.dst, arg.src, arg.len, arg.copy = arg.dst + n, arg.src + n, arg.len - n, 0
    else:
        arg.start, arg.len, arg.zeropage = arg.start + n, arg.len - n, 0


def copy(fd: int, dst: int, src: int, length: int) -> None:
    """Fill the missing pages [dst, dst + length) of ``fd``'s mm from our memory at ``src``
    (page-aligned ``dst`` and ``length``); raises FillError at the first page refused."""
    _fill(fd, UFFDIO_COPY, _Copy(dst, src, length, 0, 0), "copy", "UFFDIO_COPY", dst, length)


def zeropage(fd: int, start: int, length: int) -> None:
    """Map the zero page over the missing pages [start, start + length); raises FillError."""
    _fill(fd, UFFDIO_ZEROPAGE, _Zeropage(start, length, 0, 0), "zeropage", "UFFDIO_ZEROPAGE", start, length)


def wake(fd: int, start: int, length: int) -> None:
    """Wake the threads waiting on [start, start + length) (they retry their access)."""
    arg = _Range(start, length)
    if _libc.ioctl(fd, UFFDIO_WAKE, ctypes.addressof(arg)) != 0:
        err = ctypes.get_errno()
        raise FillError(err, "UFFDIO_WAKE", start)


class Pagefault(NamedTuple):
    address: int  # page-aligned
    write: bool


class Fork(NamedTuple):
    fd: int  # a new uffd, ours now, for the child's mm


class Remap(NamedTuple):
    source: int
    dest: int
    length: int


class Remove(NamedTuple):
    start: int
    end: int


class Unmap(NamedTuple):
    start: int
    end: int


Message = Pagefault | Fork | Remap | Remove | Unmap
_PAGEFAULT, _FORK, _REMAP, _REMOVE, _UNMAP = 0x12, 0x13, 0x14, 0x15, 0x16


def read(fd: int, most: int = 64) -> list[Message]:
    """The messages waiting on the non-blocking ``fd`` (none: an empty list); an mm that is
    gone reads as nothing waiting."""
    try:
        data = os.read(fd, _MSG * most)
    except BlockingIOError:
        return []
    return [_decode(data[i:i + _MSG]) for i in range(0, len(data) - _MSG + 1, _MSG)]


def _decode(raw: bytes) -> Message:
    event = raw[0]
    a, b, c = struct.unpack_from("<QQQ", raw, 8)
    if event == _PAGEFAULT:
        return Pagefault(b & ~(PAGE - 1), bool(a & 1))
    if event == _FORK:
        return Fork(a & 0xFFFFFFFF)
    if event == _REMAP:
        return Remap(a, b, c)
    if event == _REMOVE:
        return Remove(a, b)
    if event == _UNMAP:
        return Unmap(a, b)
    raise ValueError(f"unknown userfaultfd event {event:#x}")
