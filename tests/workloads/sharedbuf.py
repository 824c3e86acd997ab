"""Hold SIZE_MB of bytes generated from SEED (identical in every process given
the same seed) plus 4 MiB of private random bytes; on SIGUSR1 report the SHA-256 of both.

usage: sharedbuf.py SIZE_MB SEED REPORT
report: "<pid> <sha256 of shared + private>"
"""

import hashlib
import os
import random
import sys
import time

from _report import on_usr1, write_report

shared = bytearray(random.Random(int(sys.argv[2])).randbytes(int(sys.argv[1]) << 20))
private = os.urandom(4 << 20)
report = sys.argv[3]


def check() -> None:
    write_report(report, f"{os.getpid()} {hashlib.sha256(shared + private).hexdigest()}")


on_usr1(check)  # before the first report: a process that reported answers SIGUSR1
check()
while True:
    time.sleep(0.05)
