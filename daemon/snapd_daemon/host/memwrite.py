"""Writing into (and, for the benchmarks, reading from) another process's
memory with process_vm_writev(2) and process_vm_readv(2).

The target must be ours to ptrace (root here); snapd writes only into trees it
is restoring, while CRIU holds them stopped.
"""

from __future__ import annotations

import ctypes
import os

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


def write(pid: int, address: int, data: bytes | bytearray | memoryview) -> None:
    """Copy all of ``data`` to ``address`` in process ``pid``; raises OSError (EFAULT:
    the range is not mapped writable there; ESRCH: the process is gone)."""
    _transfer("process_vm_writev", pid, address, data, _PyBUF_SIMPLE)


def read_into(pid: int, address: int, buffer: bytearray | memoryview) -> None:
    """Fill all of the writable ``buffer`` from ``address`` in process ``pid``;
    raises OSError (EFAULT: the range is not mapped readable there; ESRCH: gone)."""
    _transfer("process_vm_readv", pid, address, buffer, _PyBUF_WRITABLE)


def _transfer(call: str, pid: int, address: int, data: bytes | bytearray | memoryview, flags: int) -> None:
    view = _PyBuffer()
    ctypes.pythonapi.PyObject_GetBuffer(ctypes.py_object(data), ctypes.byref(view), flags)
    try:
        function, base, total, done = getattr(_libc, call), view.buf or 0, view.len, 0
        while done < total:
            local = _IoVec(base + done, total - done)
            remote = _IoVec(address + done, total - done)
            n = function(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
            if n <= 0:
                err = ctypes.get_errno() if n < 0 else 0
                raise OSError(err, f"{call}(pid {pid}, {address + done:#x}, {total - done} bytes): "
                                   + (os.strerror(err) if err else "moved nothing"))
            done += n
    finally:
        ctypes.pythonapi.PyBuffer_Release(ctypes.byref(view))
