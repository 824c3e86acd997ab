"""The shape NCCL's RAS thread leaves in a rank after its communicators are destroyed:
a file named libnccl mapped (the library stays loaded) and an established TCP
connection (here to itself, over loopback).

usage: ras_like.py REPORT        report: "<pid> <local port> <peer port>"
"""

import mmap
import os
import socket
import sys
import tempfile
import time

from _report import write_report

library = os.path.join(tempfile.mkdtemp(prefix="ras-like-"), "libnccl.so.2")
with open(library, "wb") as f:
    f.write(b"\0" * mmap.PAGESIZE)
with open(library, "rb") as f:
    mapped = mmap.mmap(f.fileno(), mmap.PAGESIZE, prot=mmap.PROT_READ)

listener = socket.create_server(("127.0.0.1", 0))
client = socket.create_connection(listener.getsockname())
server, _ = listener.accept()
listener.close()
write_report(sys.argv[1], f"{os.getpid()} {client.getsockname()[1]} {client.getpeername()[1]}")
while True:
    time.sleep(1)
