"""Listen on 127.0.0.1 (kernel-chosen port) and answer each connection "pong <n>".

usage: tcpserver.py REPORT        report: "<pid> <port>"
"""

import os
import socket
import sys

from _report import write_report

srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0))
srv.listen(16)
write_report(sys.argv[1], f"{os.getpid()} {srv.getsockname()[1]}")
served = 0
while True:
    conn, _ = srv.accept()
    served += 1
    conn.sendall(f"pong {served}\n".encode())
    conn.close()
