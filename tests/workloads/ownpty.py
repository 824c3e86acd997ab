"""A session leader that owns its terminal (CRIU zdtm's pty00 shape): it opens a
pseudo-terminal, keeps both ends, makes the slave its controlling terminal (the
tests start it with setsid) and forks a child that shares it. Before its first
report it writes a line into the master that stays unread in the slave's input queue.

On SIGUSR1 it reads that queued line (once), sends a line each way (master -> slave,
slave -> master) and checks that the slave is still its controlling terminal with
its own process group in the foreground.

usage: ownpty.py REPORT
report: "<pid> <child pid> <tty name> <queued line or -> <round trip ok|bad> <ctty ok|bad> <checks>"
"""

import fcntl
import os
import struct
import sys
import termios
import time

from _report import on_usr1, openpty_aside, write_report

QUEUED = b"queued-before-checkpoint"
TIOCGSID = 0x5429  # asm-generic/ioctls.h (not in the termios module)

master, slave = openpty_aside()
fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
attrs = termios.tcgetattr(slave)
attrs[3] &= ~termios.ECHO  # lflags: no echo, so the master reads only what the slave writes
termios.tcsetattr(slave, termios.TCSANOW, attrs)
os.write(master, QUEUED + b"\n")
child = os.fork()
if child == 0:
    while True:
        time.sleep(1)

queued = "-"
checks = 0


def read_line(fd: int) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        line += os.read(fd, 256)
    return line.replace(b"\r", b"")


def check() -> None:
    global queued, checks
    checks += 1
    if queued == "-":
        queued = read_line(slave).strip().decode()
    ping = f"ping-{checks}".encode()
    os.write(master, ping + b"\n")
    there = read_line(slave).strip() == ping
    os.write(slave, b"pong-" + ping + b"\n")
    back = read_line(master).strip() == b"pong-" + ping
    os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))  # ENXIO without a controlling terminal
    session = struct.unpack("i", fcntl.ioctl(slave, TIOCGSID, b"\0" * 4))[0]  # the tty's session
    ctty = session == os.getsid(0) and os.tcgetpgrp(slave) == os.getpgrp()
    write_report(sys.argv[1], f"{os.getpid()} {child} {os.ttyname(slave)} {queued} "
                              f"{'ok' if there and back else 'bad'} {'ok' if ctty else 'bad'} {checks}")


on_usr1(check)  # before the first report: a process that reported answers SIGUSR1
write_report(sys.argv[1], f"{os.getpid()} {child} {os.ttyname(slave)} - - - 0")
while True:
    time.sleep(0.05)
