"""An HTTP/1.1 keep-alive server on 127.0.0.1 (kernel-chosen port) that counts the requests it
answered (its state in memory): GET /count answers the count so far.

usage: httpserver.py REPORT        report: "<pid> <port>"
"""

import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from _report import write_report

answered = 0


class Counter(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # connections stay open between requests

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        global answered
        answered += 1
        body = f"{answered}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Counter)
server.daemon_threads = True
write_report(sys.argv[1], f"{os.getpid()} {server.server_address[1]}")
server.serve_forever()
