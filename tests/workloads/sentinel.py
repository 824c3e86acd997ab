"""Hold SIZE_MB of bytes generated from SEED (identical in every process given the same
seed) in a private anonymous mapping of its own (guard pages on both sides, so it never
merges with a neighbour and chunks the same way in every process), and prove it runs.

  - every 20 ms: ticks += 1 and REPORT.beat becomes a symbolic link to "<pid> <ticks>"
    (a link, not a file: no file descriptor is ever open for it, so a checkpoint never
    catches one open on a temporary file that the process renames away once it runs, which
    would make the snapshot unrestorable: CRIU reopens every open file by its path)
  - on SIGUSR1: write "<pid> <sha256 of the region> <ticks>" to REPORT

A test that deletes REPORT.beat while the process is not running learns, from its
reappearance, that some copy of the process ran again.

usage: sentinel.py SIZE_MB SEED REPORT
"""

import contextlib
import hashlib
import os
import random
import sys
import time

from _report import guarded_region, on_usr1, write_report

size = int(sys.argv[1]) << 20
seed = int(sys.argv[2])
report = sys.argv[3]
beat = report + ".beat"

region = guarded_region(size)
gen = random.Random(seed)
for off in range(0, size, 8 << 20):
    n = min(8 << 20, size - off)
    region[off : off + n] = gen.randbytes(n)
ticks = 0


def check() -> None:
    write_report(report, f"{os.getpid()} {hashlib.sha256(region).hexdigest()} {ticks}")


on_usr1(check)  # before the first report: a process that reported answers SIGUSR1
check()
while True:
    ticks += 1
    # another copy of this process writes the beat too (the source a leave-running checkpoint left
    # running, a restored copy): its .new may be there (FileExistsError) or, for a copy restored
    # between these two calls, renamed away already (FileNotFoundError); its beat will do
    with contextlib.suppress(FileExistsError, FileNotFoundError):
        os.symlink(f"{os.getpid()} {ticks}", f"{beat}.new")
        os.replace(f"{beat}.new", beat)
    time.sleep(0.02)
