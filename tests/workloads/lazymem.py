"""Hold a region of SIZE_MB with random data, zero runs and never-touched holes; with
``events``, change a second region of 4 x QUARTER_MB the moment the process is resumed
(SIGCONT): munmap its 1st quarter, MADV_DONTNEED its 2nd, mremap its 3rd elsewhere (grown), and
fork a child that digests its 4th and the big region, neither touched since the resume.

usage: lazymem.py SIZE_MB QUARTER_MB plain|events|locked REPORT
report: "<pid> <sha256 of the big region> <checks>"; locked: the big region is MAP_LOCKED;
plain and locked: on SIGCONT it digests the big
region at once and writes "<pid> <sha256>" to REPORT.resumed; events: after the SIGCONT, REPORT.events:
"<pid> dontneed_zero=<0|1> remapped_intact=<0|1> child_quarter=<0|1> child_region=<0|1>"
"""

import ctypes
import hashlib
import mmap
import os
import signal
import sys

from _report import guarded_region, hold_digest, write_report

MIB = 1 << 20
size, quarter = int(sys.argv[1]) * MIB, int(sys.argv[2]) * MIB
events, path = sys.argv[3] == "events", sys.argv[-1]
libc = ctypes.CDLL(None, use_errno=True)
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.mremap.restype = ctypes.c_void_p
libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int]


def fill(view: memoryview) -> None:
    """Per MiB: random, zeros written, never touched, random."""
    for i in range(0, len(view) // MIB):
        kind = i % 4
        if kind in (0, 3):
            view[i * MIB : (i + 1) * MIB] = os.urandom(MIB)
        elif kind == 1:
            view[i * MIB : (i + 1) * MIB] = bytes(MIB)


if sys.argv[3] == "locked":  # mlocked: a mapping CRIU's lazy pages do not register
    region = memoryview(mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x2000))  # MAP_LOCKED
else:
    region = guarded_region(size)
fill(region)
side = guarded_region(4 * quarter)
fill(side)
base = ctypes.addressof(ctypes.c_char.from_buffer(side.obj, mmap.PAGESIZE))
expected = {k: hashlib.sha256(side[k * quarter : (k + 1) * quarter]).hexdigest() for k in range(4)}
expected_region = hashlib.sha256(region).hexdigest()


def digest(address: int, length: int) -> str:
    return hashlib.sha256(ctypes.string_at(address, length)).hexdigest()


def on_resume(_sig: int, _frame: object) -> None:
    libc.munmap(base, quarter)
    side.obj.madvise(mmap.MADV_DONTNEED, mmap.PAGESIZE + quarter, quarter)
    # grown by a page, as the 4th quarter follows it: the kernel must move it
    moved = libc.mremap(base + 2 * quarter, quarter, quarter + mmap.PAGESIZE, 1)  # MREMAP_MAYMOVE
    child = os.fork()
    if child == 0:
        fourth = digest(base + 3 * quarter, quarter) == expected[3]
        whole = hashlib.sha256(region).hexdigest() == expected_region
        write_report(f"{path}.child", f"{int(fourth)} {int(whole)}")
        os._exit(0)
    os.waitpid(child, 0)
    with open(f"{path}.child") as f:
        fourth, whole = f.read().split()
    zero = ctypes.string_at(base + quarter, quarter) == bytes(quarter)
    intact = moved not in (None, ctypes.c_void_p(-1).value) and digest(moved, quarter) == expected[2]
    write_report(f"{path}.events", f"{os.getpid()} dontneed_zero={int(zero)} remapped_intact={int(intact)} "
                 f"child_quarter={fourth} child_region={whole}")


def on_resume_digest(_sig: int, _frame: object) -> None:
    write_report(f"{path}.resumed", f"{os.getpid()} {hashlib.sha256(region).hexdigest()}")


signal.signal(signal.SIGCONT, on_resume if events else on_resume_digest)
hold_digest(path, lambda: region)
