"""An HTTP/1.1 keep-alive server that counts the requests it answered (its state in memory):
GET /count answers the count so far, GET /host "<host name it sees> <count>" (its UTS
namespace's name). It listens on 127.0.0.1, kernel-chosen port, unless HOST and PORT are
given; with MIB it also holds that many MiB of random bytes (a region a restore injects).

usage: httpserver.py [HOST PORT [MIB]] REPORT        report: "<pid> <port>"
"""

import os
import socket
import sys

from _report import QuietHandler, serve_http

answered = 0
options, report = sys.argv[1:-1], sys.argv[-1]
held = os.urandom(int(options[2]) << 20) if len(options) > 2 else b""


class Counter(QuietHandler):
    protocol_version = "HTTP/1.1"  # connections stay open between requests

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        global answered
        answered += 1
        self.reply(200, (f"{socket.gethostname()} {answered}\n" if self.path == "/host" else f"{answered}\n").encode())


serve_http(Counter, report, (options[0], int(options[1])) if options else ("127.0.0.1", 0))
