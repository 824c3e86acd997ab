"""Hold SIZE_MB of bytes generated from SEED (identical in every process given the same seed, in
a private anonymous mapping between guard pages, so it chunks alike everywhere) with a secret
MARKER (hex) written into it at every MiB, as a token kept in memory would be.

usage: secret.py SIZE_MB SEED MARKER_HEX REPORT
report: "<pid> <sha256 of the region> <number of checks so far>", now and on SIGUSR1
"""

import ctypes
import mmap
import random
import sys

from _report import hold_digest

size = int(sys.argv[1]) << 20
gen = random.Random(int(sys.argv[2]))
marker = bytes.fromhex(sys.argv[3])

page = mmap.PAGESIZE
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
area = mmap.mmap(-1, size + 2 * page, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
base = ctypes.addressof(ctypes.c_char.from_buffer(area))
for guard in (base, base + page + size):
    if libc.mprotect(guard, page, 0) != 0:
        raise OSError(ctypes.get_errno(), "mprotect of a guard page failed")
region = memoryview(area)[page : page + size]
for off in range(0, size, 1 << 20):
    region[off : off + (1 << 20)] = gen.randbytes(1 << 20)
    region[off + 4096 : off + 4096 + len(marker)] = marker
hold_digest(sys.argv[4], lambda: region)
