"""Hold SIZE_MB of random bytes; on SIGUSR1 report their SHA-256 as computed now.

usage: memhold.py SIZE_MB REPORT
report: "<pid> <sha256 hex> <number of checks so far>"
"""

import os
import sys

from _report import hold_digest

size = int(sys.argv[1]) << 20
buf = bytearray(size)
for off in range(0, size, 16 << 20):
    buf[off : off + (16 << 20)] = os.urandom(min(16 << 20, size - off))
hold_digest(sys.argv[2], lambda: buf)
