"""Print "<pid> tick <n>" to stdout and "<pid> err <n>" to stderr ten times a second.

usage: ticker.py REPORT
report: "<pid>" once running
"""

import os
import sys
import time

from _report import write_report

write_report(sys.argv[1], str(os.getpid()))
n = 0
while True:
    n += 1
    print(f"{os.getpid()} tick {n}", flush=True)
    print(f"{os.getpid()} err {n}", file=sys.stderr, flush=True)
    time.sleep(0.1)
