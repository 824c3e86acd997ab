"""An HTTP/1.1 keep-alive server that counts the requests it answered (its state in memory):
GET /count answers the count so far, GET /host "<host name it sees> <count>" (its UTS
namespace's name). It listens on 127.0.0.1, kernel-chosen port, unless HOST and PORT are
given; with MIB it also holds that many MiB of random bytes (a region a restore injects).

usage: httpserver.py [HOST PORT [MIB]] REPORT        report: "<pid> <port>"
"""

import os
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from _report import write_report

answered = 0
options, report = sys.argv[1:-1], sys.argv[-1]
held = os.urandom(int(options[2]) << 20) if len(options) > 2 else b""


class Counter(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # connections stay open between requests

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        global answered
        answered += 1
        body = (f"{socket.gethostname()} {answered}\n" if self.path == "/host" else f"{answered}\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


server = ThreadingHTTPServer((options[0], int(options[1])) if options else ("127.0.0.1", 0), Counter)
server.daemon_threads = True
write_report(report, f"{os.getpid()} {server.server_address[1]}")
server.serve_forever()
