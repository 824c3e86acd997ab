"""Write "<pid> line <n> <wall clock ns>" to LOG ten times a second, through one write-only file
opened as `cmd > LOG` opens it (truncated, not appending).

usage: filelog.py LOG REPORT
report: "<pid>" once running
"""

import os
import sys
import time

from _report import write_report

log = open(sys.argv[1], "w", buffering=1)
write_report(sys.argv[2], str(os.getpid()))
n = 0
while True:
    n += 1
    log.write(f"{os.getpid()} line {n} {time.time_ns()}\n")
    time.sleep(0.1)
