"""Hold 96 MiB of seeded random memory; on SIGUSR1 tell a unix socket "<digest> <asked> <pid>";
with a port, also answer each TCP connection on 127.0.0.1:PORT "<digest> <served>".

usage: nsreport.py SOCKET PORT REPORT     PORT 0: no TCP server; report: "<pid>"
Meant to run under `snapd run` (pid 2 of its own pid namespace). The socket is
connected only while answering, so a checkpoint never sees it; the receiver
tells replicas apart by SO_PEERCRED (host pids). The counters live in memory:
each restored copy continues from the snapshot's.
"""

import hashlib
import os
import random
import select
import signal
import socket
import sys

from _report import tell, write_report

data = bytearray(random.Random(13).randbytes(96 << 20))  # incompressible: its chunks are the store's biggest
digest = hashlib.blake2b(data, digest_size=8).hexdigest()
asked = served = 0
wanted = False


def usr1(_sig: int, _frame: object) -> None:
    global wanted
    wanted = True


signal.signal(signal.SIGUSR1, usr1)
port = int(sys.argv[2])
srv = None
if port:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(16)
write_report(sys.argv[3], f"{os.getpid()}")
while True:
    if wanted:
        wanted = False
        asked += 1
        tell(sys.argv[1], f"{digest} {asked} {os.getpid()}")
    ready = select.select([srv] if srv else [], [], [], 0.05)[0]
    if ready:
        conn, _ = srv.accept()
        served += 1
        conn.sendall(f"{digest} {served}\n".encode())
        conn.close()
