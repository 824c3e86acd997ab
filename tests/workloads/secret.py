"""Hold SIZE_MB of bytes generated from SEED (identical in every process given the same seed, in
a private anonymous mapping between guard pages, so it chunks alike everywhere) with a secret
MARKER (hex) written into it at every MiB, as a token kept in memory would be.

usage: secret.py SIZE_MB SEED MARKER_HEX REPORT
report: "<pid> <sha256 of the region> <number of checks so far>", now and on SIGUSR1
"""

import random
import sys

from _report import guarded_region, hold_digest

size = int(sys.argv[1]) << 20
gen = random.Random(int(sys.argv[2]))
marker = bytes.fromhex(sys.argv[3])

region = guarded_region(size)
for off in range(0, size, 1 << 20):
    region[off : off + (1 << 20)] = gen.randbytes(1 << 20)
    region[off + 4096 : off + 4096 + len(marker)] = marker
hold_digest(sys.argv[4], lambda: region)
