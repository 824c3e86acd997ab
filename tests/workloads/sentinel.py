"""Hold SIZE_MB of bytes generated from SEED (identical in every process given the same
seed) in a private anonymous mapping of its own (guard pages on both sides, so it never
merges with a neighbour and chunks the same way in every process), and prove it runs.

  - every 20 ms: ticks += 1 and write "<pid> <ticks>" to REPORT.beat
  - on SIGUSR1: write "<pid> <sha256 of the region> <ticks>" to REPORT

A test that deletes REPORT.beat while the process is not running learns, from its
reappearance, that some copy of the process ran again.

usage: sentinel.py SIZE_MB SEED REPORT
"""

import ctypes
import hashlib
import mmap
import os
import random
import sys
import time

from _report import on_usr1, write_report

size = int(sys.argv[1]) << 20
seed = int(sys.argv[2])
report = sys.argv[3]
beat = report + ".beat"

PROT_NONE = 0
page = mmap.PAGESIZE
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
area = mmap.mmap(-1, size + 2 * page, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
base = ctypes.addressof(ctypes.c_char.from_buffer(area))
for guard in (base, base + page + size):
    if libc.mprotect(guard, page, PROT_NONE) != 0:
        raise OSError(ctypes.get_errno(), "mprotect of a guard page failed")
region = memoryview(area)[page : page + size]
gen = random.Random(seed)
for off in range(0, size, 8 << 20):
    n = min(8 << 20, size - off)
    region[off : off + n] = gen.randbytes(n)
ticks = 0


def check() -> None:
    write_report(report, f"{os.getpid()} {hashlib.sha256(region).hexdigest()} {ticks}")


check()
on_usr1(check)
while True:
    ticks += 1
    write_report(beat, f"{os.getpid()} {ticks}")
    time.sleep(0.02)
