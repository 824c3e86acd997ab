"""Hold SIZE_MB of bf16 numbers drawn like model weights; on SIGUSR1 report their SHA-256.

usage: weights.py SIZE_MB REPORT
report: "<pid> <sha256 hex> <number of checks so far>"
"""

import sys

import numpy
from _report import hold_digest

count = int(sys.argv[1]) << 19
normal = numpy.random.default_rng(7).standard_normal(count, dtype=numpy.float32) * 0.02
weights = (normal.view(numpy.uint32) >> 16).astype(numpy.uint16)  # bf16: the high half of a float32
hold_digest(sys.argv[2], weights.tobytes)
