"""Writing into (and, for the benchmarks, reading from) another process's memory
with process_vm_writev(2) and process_vm_readv(2).

The target must be ours to ptrace (root here); snapd writes only into trees it
is restoring, while CRIU holds them stopped. ``write_many`` writes a batch of
pieces in as few calls as the kernel allows (IOV_MAX iovecs a call, pieces
adjacent on both sides merged into one), so a restore makes one system call,
and one GIL hand-off, for many chunks.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator, Sequence

import numpy

_libc = ctypes.CDLL(None, use_errno=True)


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


for _call in (_libc.process_vm_writev, _libc.process_vm_readv):
    _call.restype = ctypes.c_ssize_t
    _call.argtypes = [
        ctypes.c_int, ctypes.POINTER(_IoVec), ctypes.c_ulong, ctypes.POINTER(_IoVec), ctypes.c_ulong, ctypes.c_ulong,
    ]


class _PyBuffer(ctypes.Structure):
    """CPython's Py_buffer: the one way to get the address of any contiguous
    buffer (bytes, bytearray, read-only memoryview slices) without copying it."""

    _fields_ = [
        ("buf", ctypes.c_void_p), ("obj", ctypes.py_object), ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p),
    ]


_PyBUF_SIMPLE = 0
_PyBUF_WRITABLE = 1
IOV_MAX = 1024


class WriteRefused(OSError):
    """process_vm_writev (or _readv) moved nothing at ``address`` (``length`` bytes of one piece left)."""

    def __init__(self, err: int, pid: int, address: int, length: int, call: str = "process_vm_writev") -> None:
        super().__init__(err, f"{call}(pid {pid}, {address:#x}, {length} bytes): "
                              + (os.strerror(err) if err else "moved nothing"))
        self.address = address
        self.length = length


def write(pid: int, address: int, data: bytes | bytearray | memoryview) -> None:
    """Copy all of ``data`` to ``address`` in process ``pid``; raises WriteRefused, an
    OSError (EFAULT: the range is not mapped writable there; ESRCH: the process is gone)."""
    write_many(pid, [(address, data)])


def read_into(pid: int, address: int, buffer: bytearray | memoryview) -> None:
    """Fill all of the writable ``buffer`` from ``address`` in process ``pid``; raises
    WriteRefused naming process_vm_readv (EFAULT: not mapped readable there; ESRCH: gone)."""
    _move(pid, [(address, buffer)], True)


def write_many(pid: int, pieces: Sequence[tuple[int, bytes | bytearray | memoryview]]) -> None:
    """Copy each (address, data) piece to that address in process ``pid``, in order; raises
    WriteRefused (an OSError, naming where) at the first byte the kernel refuses, with
    the pieces before it written. The data must stay alive and unchanged until this returns."""
    _move(pid, pieces, False)


@contextlib.contextmanager
def addresses(buffers: Sequence[bytes | bytearray | memoryview], writable: bool = False) -> Iterator[list[tuple[int, int]]]:
    """(address in our memory, bytes) of each contiguous buffer, valid (the buffers pinned)
    until the ``with`` block ends; ``writable`` refuses read-only buffers."""
    held = []
    try:
        for data in buffers:
            view = _PyBuffer()
            ctypes.pythonapi.PyObject_GetBuffer(ctypes.py_object(data), ctypes.byref(view),
                                                _PyBUF_WRITABLE if writable else _PyBUF_SIMPLE)
            held.append(view)
        yield [(view.buf or 0, view.len) for view in held]
    finally:
        for view in held:
            ctypes.pythonapi.PyBuffer_Release(ctypes.byref(view))


def _move(pid: int, pieces: Sequence[tuple[int, bytes | bytearray | memoryview]], writable: bool) -> None:
    """Write the pieces, or read into them (``writable``)."""
    runs: list[list[int]] = []  # [local address, remote address, length], adjacent pieces merged
    with addresses([data for _, data in pieces], writable) as bases:
        for (address, _), (base, n) in zip(pieces, bases, strict=True):
            last = runs[-1] if runs else None
            if last and last[0] + last[2] == base and last[1] + last[2] == address:
                last[2] += n
            elif n:
                runs.append([base, address, n])
        _move_runs(pid, runs, "process_vm_readv" if writable else "process_vm_writev")


def _move_runs(pid: int, runs: list[list[int]], call: str) -> None:
    """``call`` (process_vm_writev or _readv) over ``runs`` (local, remote, length), IOV_MAX
    of them a call, resuming after a short transfer (the kernel stops at a page it cannot move)."""
    function = getattr(_libc, call)
    table = numpy.array(runs, dtype=numpy.uint64).reshape(-1, 3)
    local = numpy.ascontiguousarray(table[:, [0, 2]])
    remote = numpy.ascontiguousarray(table[:, [1, 2]])
    first = 0
    while first < len(runs):
        count = min(IOV_MAX, len(runs) - first)
        n = function(pid, local[first:].ctypes.data_as(ctypes.POINTER(_IoVec)), count,
                     remote[first:].ctypes.data_as(ctypes.POINTER(_IoVec)), count, 0)
        if n <= 0:
            err = ctypes.get_errno() if n < 0 else 0
            raise WriteRefused(err, pid, int(remote[first, 0]), int(remote[first, 1]), call)
        while n and n >= remote[first, 1]:  # whole runs written
            n -= int(remote[first, 1])
            first += 1
        if n:  # a run written in part: the rest of it next
            for side in (local, remote):
                side[first, 0] += n
                side[first, 1] -= n
