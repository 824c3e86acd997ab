"""A process whose controlling terminal's other end is outside its tree, as a program
started by a terminal emulator or sshd: the parent opens a pseudo-terminal and keeps
its master; the child leads a session of its own with the slave as its controlling
terminal and forks a grandchild that shares it.

usage: tty.py REPORT
report: "<parent pid> <child pid> <grandchild pid> <tty name>"
"""

import fcntl
import os
import sys
import termios
import time

from _report import openpty_aside, write_report

master, slave = openpty_aside()
name = os.ttyname(slave)
child = os.fork()
if child == 0:
    os.close(master)
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    grandchild = os.fork()
    if grandchild == 0:
        while True:
            time.sleep(1)
    write_report(sys.argv[1], f"{os.getppid()} {os.getpid()} {grandchild} {name}")
    while True:
        time.sleep(1)
os.close(slave)
while True:
    time.sleep(1)
