"""A parent with an exited, unreaped child (a zombie); with "churn", it also starts
threads and reaped children that come and go all the time. On SIGUSR1 it reports.

usage: zombie.py [churn] REPORT
report: "<pid> <zombie pid> <ticks>"
"""

import os
import sys
import threading
import time

from _report import on_usr1, write_report

report = sys.argv[-1]
zombie = os.fork()
if zombie == 0:
    os._exit(0)
ticks = 0


def churn() -> None:
    while True:
        threading.Thread(target=time.sleep, args=(0.002,)).start()
        child = os.fork()
        if child == 0:
            os._exit(0)
        os.waitpid(child, 0)
        time.sleep(0.005)


def status() -> None:
    write_report(report, f"{os.getpid()} {zombie} {ticks}")


if sys.argv[1] == "churn":
    threading.Thread(target=churn, daemon=True).start()
time.sleep(0.1)
on_usr1(status)  # before the first report: a process that reported answers SIGUSR1
status()
while True:
    ticks += 1
    time.sleep(0.01)
