"""Hold SIZE_MB of random bytes; on SIGUSR1 report their SHA-256 as computed now.

usage: memhold.py SIZE_MB REPORT
report: "<pid> <sha256 hex> <number of checks so far>"
"""

import hashlib
import os
import sys
import time

from _report import on_usr1, write_report

size = int(sys.argv[1]) << 20
report = sys.argv[2]
buf = bytearray(size)
for off in range(0, size, 16 << 20):
    buf[off : off + (16 << 20)] = os.urandom(min(16 << 20, size - off))
checks = 0


def check() -> None:
    global checks
    checks += 1
    write_report(report, f"{os.getpid()} {hashlib.sha256(buf).hexdigest()} {checks}")


check()
on_usr1(check)
while True:
    time.sleep(0.05)
