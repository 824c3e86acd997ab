"""A parent with one child; each reports on SIGUSR1 (parent to REPORT, child to REPORT.child).

usage: forker.py REPORT
report: "<pid> <ppid> <ticks>"
"""

import os
import sys
import time

from _report import on_usr1, write_report

report = sys.argv[1]
child = os.fork()
path = report if child else report + ".child"
ticks = 0


def status() -> None:
    write_report(path, f"{os.getpid()} {os.getppid()} {ticks}")


on_usr1(status)  # before the first report: a process that reported answers SIGUSR1
status()
while True:
    ticks += 1
    time.sleep(0.01)
