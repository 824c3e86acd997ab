"""Hold an exclusive flock and a POSIX (fcntl) write lock on FILE while sleeping.

usage: locker.py FILE REPORT       report: "<pid> locked"
"""

import fcntl
import os
import sys
import time

from _report import write_report

path, report = sys.argv[1], sys.argv[2]
flocked = open(path, "a")  # noqa: SIM115 (held for the process's life)
fcntl.flock(flocked, fcntl.LOCK_EX)
posix = open(path + ".posix", "a")  # noqa: SIM115
fcntl.lockf(posix, fcntl.LOCK_EX)
write_report(report, f"{os.getpid()} locked")
while True:
    time.sleep(0.05)
