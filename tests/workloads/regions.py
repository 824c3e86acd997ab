"""Memory of every kind snapd's fast restore must bring back, with odd sizes and alignments.

  big:     96 MiB + 12 KiB private anonymous, random, starting 8 KiB past a 2 MiB boundary
  partial: 40 MiB private anonymous, first half random, second half zero
  file:    4 MiB private mapping of a file, modified in place (copy-on-write pages)
  shared:  8 MiB shared anonymous, random
  touching: 16 MiB private anonymous, random, as two regions that touch (the second half
           madvised MADV_DONTFORK, so the kernel keeps it a VMA of its own)
On SIGUSR1: report the SHA-256 of each; on SIGUSR2: rewrite the first 8 MiB of "big".

usage: regions.py REPORT
report: "<pid> <big> <partial> <file> <shared> <touching>"
"""

import ctypes
import hashlib
import mmap
import os
import signal
import sys
import time

from _report import on_usr1, write_report

MiB = 1 << 20
MAP_FIXED_NOREPLACE = 0x100000
report = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def anonymous(size: int, skew: int) -> memoryview:
    """A private anonymous mapping starting ``skew`` bytes past a 2 MiB boundary."""
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    prot = mmap.PROT_READ | mmap.PROT_WRITE
    base = libc.mmap(None, size + 4 * MiB, prot, flags, -1, 0)
    start = ((base + 2 * MiB - 1) & ~(2 * MiB - 1)) + skew
    libc.munmap(base, size + 4 * MiB)
    if libc.mmap(start, size, prot, flags | MAP_FIXED_NOREPLACE, -1, 0) != start:
        raise OSError(ctypes.get_errno(), "mmap at a chosen address failed")
    return memoryview((ctypes.c_char * size).from_address(start)).cast("B")


big = anonymous(96 * MiB + 12 * 1024, 8192)
big[:] = os.urandom(len(big))
partial = anonymous(40 * MiB, 0)
partial[: 20 * MiB] = os.urandom(20 * MiB)
backing = report + ".backing"
with open(backing, "wb") as f:
    f.write(os.urandom(4 * MiB))
with open(backing, "r+b") as f:
    filemap = mmap.mmap(f.fileno(), 4 * MiB, flags=mmap.MAP_PRIVATE)
filemap[MiB : 2 * MiB] = os.urandom(MiB)
shared = mmap.mmap(-1, 8 * MiB, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
shared.write(os.urandom(8 * MiB))
touching = anonymous(16 * MiB, 0)
touching[:] = os.urandom(16 * MiB)
MADV_DONTFORK = 10
if libc.madvise(ctypes.c_void_p(ctypes.addressof(ctypes.c_char.from_buffer(touching)) + 8 * MiB),
                ctypes.c_size_t(8 * MiB), MADV_DONTFORK) != 0:
    raise OSError(ctypes.get_errno(), "madvise of the second half failed")


def check() -> None:
    digests = [hashlib.sha256(m).hexdigest()[:16] for m in (big, partial, filemap, shared, touching)]
    write_report(report, " ".join([str(os.getpid()), *digests]))


def rewrite() -> None:
    big[: 8 * MiB] = os.urandom(8 * MiB)
    check()


on_usr1(check)  # the handlers before the first report: a process that reported answers both signals
signal.signal(signal.SIGUSR2, lambda *_: rewrite())
check()
while True:
    time.sleep(0.05)
