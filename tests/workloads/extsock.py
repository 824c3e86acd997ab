"""Hold a unix datagram socket connected to PEER (a named socket of a process outside this
tree, as /dev/log is syslog's) and, on SIGUSR1, send "ping <n>" through it.

usage: extsock.py PEER REPORT      report: "<pid> <pings sent> <last error or ok>"
"""

import os
import socket
import sys
import time

from _report import on_usr1, write_report

peer, report = sys.argv[1], sys.argv[2]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.connect(peer)
sent = 0


def ping() -> None:
    global sent
    try:
        sock.send(f"ping {sent + 1}".encode())
        sent += 1
        status = "ok"
    except OSError as exc:
        status = f"errno{exc.errno}"
    write_report(report, f"{os.getpid()} {sent} {status}")


on_usr1(ping)  # before the first report: a process that reported answers SIGUSR1
write_report(report, f"{os.getpid()} {sent} ok")
while True:
    time.sleep(0.05)
