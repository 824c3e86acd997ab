"""A region of SIZE_MB random bytes made before a fork, so parent and child both hold it
(copy-on-write); the child then zeroes its second half. Each reports the SHA-256 of its copy
(the parent to REPORT, the child to REPORT.child), now and on SIGUSR1.

usage: forkshare.py SIZE_MB REPORT
report: "<pid> <sha256 of its copy of the region> <checks so far>"
"""

import os
import sys

from _report import guarded_region, hold_digest

size = int(sys.argv[1]) << 20
region = guarded_region(size)
for off in range(0, size, 1 << 20):
    region[off : off + (1 << 20)] = os.urandom(1 << 20)
if os.fork():
    hold_digest(sys.argv[2], lambda: region)
else:
    region[size // 2 :] = bytes(size - size // 2)  # zeros where the parent holds its bytes
    hold_digest(sys.argv[2] + ".child", lambda: region)
