"""Demo workload: a counter that remembers its state in memory.

Every half second it appends one line to LOG: its pid, a tick count that only
lives in memory, and the SHA-256 of a 64 MiB random buffer made at start. After
a checkpoint and restore the ticks carry on from where they stopped and the
digest stays the same: the memory came back.

usage: demo_counter.py LOG
"""

import hashlib
import os
import sys
import time

log_path = sys.argv[1]
buffer = os.urandom(64 << 20)
digest = hashlib.sha256(buffer).hexdigest()[:16]
tick = 0
while True:
    tick += 1
    with open(log_path, "a") as log:
        log.write(f"pid={os.getpid()} tick={tick} memory-sha256={digest}\n")
    time.sleep(0.5)
