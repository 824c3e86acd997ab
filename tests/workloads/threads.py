"""N threads each counting up; on SIGUSR1 report the live thread count and the counters.

usage: threads.py N REPORT
report: "<pid> <threads alive> <counter> <counter> ..."
"""

import os
import sys
import threading
import time

from _report import on_usr1, write_report

n = int(sys.argv[1])
report = sys.argv[2]
counters = [0] * n


def count(i: int) -> None:
    while True:
        counters[i] += 1
        time.sleep(0.001)


for i in range(n):
    threading.Thread(target=count, args=(i,), daemon=True).start()


def status() -> None:
    write_report(report, " ".join(map(str, [os.getpid(), threading.active_count(), *counters])))


time.sleep(0.1)
on_usr1(status)  # before the first report: a process that reported answers SIGUSR1
status()
while True:
    time.sleep(0.05)
