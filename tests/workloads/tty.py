"""A process with a controlling terminal, as one started from a shell in a terminal:
it opens a pseudo-terminal, makes it its controlling terminal (it leads its own
session: the tests start it with setsid), and forks a child that shares it.

usage: tty.py REPORT
report: "<pid> <child pid> <tty name>"
"""

import fcntl
import os
import sys
import termios
import time

from _report import write_report

master, slave = os.openpty()
fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
child = os.fork()
if child == 0:
    while True:
        time.sleep(1)
write_report(sys.argv[1], f"{os.getpid()} {child} {os.ttyname(slave)}")
while True:
    time.sleep(1)
