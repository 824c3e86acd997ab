"""An HTTP server on every address of its network namespace, port PORT, that answers
GET / with the host name it sees (its UTS namespace's) and how many requests it has
answered (its state in memory): "<hostname> <count>". With MIB it also holds that many MiB of
random bytes (a region a restore injects).

usage: podserver.py PORT REPORT [MIB]        report: "<pid> <port>"
"""

import os
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from _report import write_report

answered = 0
held = os.urandom(int(sys.argv[3]) << 20) if len(sys.argv) > 3 else b""


class Answer(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        global answered
        answered += 1
        body = f"{socket.gethostname()} {answered}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


server = ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Answer)
server.daemon_threads = True
write_report(sys.argv[2], f"{os.getpid()} {server.server_address[1]}")
server.serve_forever()
