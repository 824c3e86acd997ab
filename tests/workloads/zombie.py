"""A parent holding 8 MiB of random bytes whose only child has exited and is never
reaped: the child stays a zombie for the parent's whole life.

usage: zombie.py REPORT
report (on start and on SIGUSR1): "<pid> <zombie pid> <sha256 of the bytes>"
"""

import hashlib
import os
import sys
import time

from _report import on_usr1, write_report

report = sys.argv[1]
buf = bytearray(os.urandom(8 << 20))
child = os.fork()
if child == 0:
    os._exit(7)
# SIGCHLD keeps its default disposition and nothing waits: the child stays a zombie
while True:
    with open(f"/proc/{child}/stat") as f:
        if f.read().rsplit(")", 1)[1].split()[0] == "Z":
            break
    time.sleep(0.01)


def check() -> None:
    write_report(report, f"{os.getpid()} {child} {hashlib.sha256(buf).hexdigest()}")


check()
on_usr1(check)
while True:
    time.sleep(0.05)
