"""Hold SIZE_MB of bytes generated from SEED (identical in every process given the same
seed) in a private anonymous mapping of its own (guard pages on both sides, so it never
merges with a neighbour and chunks the same way in every process), and prove it runs.

  - every 20 ms: ticks += 1 and write "<pid> <ticks>" to REPORT.beat
  - on SIGUSR1: write "<pid> <sha256 of the region> <ticks>" to REPORT

A test that deletes REPORT.beat while the process is not running learns, from its
reappearance, that some copy of the process ran again.

usage: sentinel.py SIZE_MB SEED REPORT
"""

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


check()
on_usr1(check)
while True:
    ticks += 1
    write_report(beat, f"{os.getpid()} {ticks}")
    time.sleep(0.02)
