"""host/uffd.py against the kernel: a userfaultfd over a mapping of this process (the
facts postcopy.py relies on, checked on the machine that runs the tests)."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import select
import threading
from collections.abc import Iterator

import pytest

from snapd_daemon.host import uffd

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.memcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.mremap.restype = ctypes.c_void_p
_libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int]
_UFFDIO_API, _UFFDIO_REGISTER = 0xC018AA3F, 0xC020AA00
_EVENTS = 0x4 | 0x8 | 0x40  # EVENT_REMAP | EVENT_REMOVE | EVENT_UNMAP
P = uffd.PAGE


def missing_region(pages: int) -> tuple[int, int, mmap.mmap]:
    """(uffd, address, mapping): a new userfaultfd (the caller's to close) over ``pages`` missing
    pages of a new private mapping of this process (kept while the mapping object lives),
    registered in missing mode, with remap/remove/unmap events."""
    fd = _libc.syscall(323, os.O_CLOEXEC | os.O_NONBLOCK)  # userfaultfd (x86_64)
    assert fd >= 0, os.strerror(ctypes.get_errno())
    api = (ctypes.c_uint64 * 3)(0xAA, _EVENTS, 0)
    assert _libc.ioctl(fd, _UFFDIO_API, api) == 0, os.strerror(ctypes.get_errno())
    area = mmap.mmap(-1, pages * P, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    base = ctypes.addressof(ctypes.c_char.from_buffer(area))
    register = (ctypes.c_uint64 * 4)(base, pages * P, 1, 0)  # MODE_MISSING
    assert _libc.ioctl(fd, _UFFDIO_REGISTER, register) == 0, os.strerror(ctypes.get_errno())
    return fd, base, area


def read_page(address: int) -> tuple[threading.Thread, ctypes.Array[ctypes.c_char]]:
    """A thread started reading the page at ``address`` (ctypes drops the GIL: a fault there
    waits in the kernel alone), and where its bytes land."""
    out = ctypes.create_string_buffer(P)
    reader = threading.Thread(target=_libc.memcpy, args=(out, address, P), daemon=True)
    reader.start()
    return reader, out


@pytest.fixture
def region() -> Iterator[tuple[int, int]]:
    """(uffd, address) of 16 missing pages registered in missing mode, with remap/remove/unmap events."""
    fd, base, _area = missing_region(16)
    yield fd, base
    os.close(fd)


def _error_of(call: object, *args: int) -> list[OSError]:
    """The OSError ``call(*args)`` raised, or none."""
    try:
        call(*args)  # type: ignore[operator]
    except OSError as exc:
        return [exc]
    return []


def _fill_error(call: object, *args: int) -> int:
    with pytest.raises(uffd.FillError) as info:
        call(*args)  # type: ignore[operator]
    return info.value.errno


def test_copy_zeropage_and_their_refusals(region: tuple[int, int]) -> None:
    fd, base = region
    data = os.urandom(2 * P)
    src = ctypes.create_string_buffer(data, len(data))
    uffd.copy(fd, base, ctypes.addressof(src), 2 * P)
    assert ctypes.string_at(base, 2 * P) == data
    assert _fill_error(uffd.copy, fd, base + P, ctypes.addressof(src), P) == errno.EEXIST
    uffd.zeropage(fd, base + 2 * P, P)
    assert ctypes.string_at(base + 2 * P, P) == bytes(P)
    assert _fill_error(uffd.zeropage, fd, base + 2 * P, P) == errno.EEXIST
    # a copy over a present page fills what comes before it, then stops there
    uffd.zeropage(fd, base + 4 * P, P)
    with pytest.raises(uffd.FillError) as info:
        uffd.copy(fd, base + 3 * P, ctypes.addressof(src), 2 * P)
    assert info.value.errno == errno.EEXIST and info.value.address == base + 4 * P
    assert ctypes.string_at(base + 3 * P, P) == data[:P]
    assert uffd.read(fd) == []  # nothing waiting


def test_a_fault_waits_until_filled_and_events_are_read_in_order(region: tuple[int, int]) -> None:
    fd, base = region
    reader, out = read_page(base + 5 * P)
    msgs: list[uffd.Message] = []
    while not msgs:
        msgs = uffd.read(fd)
    assert msgs == [uffd.Pagefault(base + 5 * P, False)]
    assert reader.is_alive()  # waiting for the page
    data = os.urandom(P)
    src = ctypes.create_string_buffer(data, P)
    uffd.copy(fd, base + 5 * P, ctypes.addressof(src), P)  # answers (wakes) the fault
    reader.join(10)
    assert not reader.is_alive() and out.raw == data
    # madvise(DONTNEED), munmap and mremap report events and wait until they are read;
    # meanwhile a fill is refused with EAGAIN
    calls = [(_libc.madvise, (base + 8 * P, 2 * P, 4)),  # MADV_DONTNEED
             (_libc.munmap, (base + 14 * P, 2 * P)),
             (_libc.mremap, (base + 10 * P, 2 * P, 3 * P, 1))]  # MREMAP_MAYMOVE: it cannot grow in place
    seen: list[uffd.Message] = []
    for call, args in calls:
        result: list[int] = []
        t = threading.Thread(target=lambda c=call, a=args: result.append(c(*a)))
        t.start()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        assert poller.poll(10_000)
        assert _fill_error(uffd.zeropage, fd, base + 12 * P, P) == errno.EAGAIN
        while t.is_alive():  # the event may be more than one message apart
            seen += uffd.read(fd)
            t.join(0.01)
    moved = result[0]
    # a moving mremap reports the move, then the unmap of the old range
    assert seen == [uffd.Remove(base + 8 * P, base + 10 * P), uffd.Unmap(base + 14 * P, base + 16 * P),
                    uffd.Remap(base + 10 * P, moved, 2 * P), uffd.Unmap(base + 10 * P, base + 12 * P)]
    assert _fill_error(uffd.zeropage, fd, base + 10 * P, P) == errno.ENOENT  # moved away
    uffd.zeropage(fd, moved, P)  # the registration moved with it
    uffd.wake(fd, moved, P)


def test_a_kernel_read_that_cannot_wait_fails_on_a_missing_page_until_the_uffd_closes(region: tuple[int, int]) -> None:
    """A read through /proc/PID/mem pins the page with get_user_pages, whose faults have no
    FAULT_FLAG_ALLOW_RETRY: under a uffd a missing page is then an error at once (EIO), with
    no fault for the monitor to answer (a driver pinning the host copy of VRAM would see the
    same). Closing the uffd makes it an ordinary hole that reads zeros: why postcopy.py closes
    the uffds the moment the fill is whole, not when the CUDA restore has returned."""
    fd, base = region
    mem = os.open("/proc/self/mem", os.O_RDONLY)
    try:
        refused: list[OSError] = []
        reader = threading.Thread(target=lambda: refused.extend(_error_of(os.pread, mem, P, base + 6 * P)))
        reader.start()  # in a thread: on a kernel where such a read waited, the test fails instead of hanging
        reader.join(10)
        assert not reader.is_alive() and [e.errno for e in refused] == [errno.EIO] and uffd.read(fd) == []
        data = os.urandom(P)
        src = ctypes.create_string_buffer(data, P)
        uffd.copy(fd, base + 6 * P, ctypes.addressof(src), P)
        assert os.pread(mem, P, base + 6 * P) == data  # present: read as any page
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, fd)  # the uffd closed (the fixture closes what is at its number now)
        os.close(null)
        assert os.pread(mem, P, base + 7 * P) == bytes(P)
    finally:
        os.close(mem)
