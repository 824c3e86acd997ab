"""Hold SIZE_MB of bf16 numbers drawn like model weights; on SIGUSR1 report their SHA-256.

usage: weights.py SIZE_MB REPORT
report: "<pid> <sha256 hex> <number of checks so far>"
"""

import hashlib
import os
import sys
import time

import numpy

from _report import on_usr1, write_report

count = int(sys.argv[1]) << 19
report = sys.argv[2]
normal = numpy.random.default_rng(7).standard_normal(count, dtype=numpy.float32) * 0.02
weights = (normal.view(numpy.uint32) >> 16).astype(numpy.uint16)  # bf16: the high half of a float32
checks = 0


def check() -> None:
    global checks
    checks += 1
    write_report(report, f"{os.getpid()} {hashlib.sha256(weights.tobytes()).hexdigest()} {checks}")


check()
on_usr1(check)
while True:
    time.sleep(0.05)
