"""An HTTP/1.1 keep-alive server on 127.0.0.1 (kernel-chosen port) that counts the requests it
answered (its state in memory): GET /count answers the count so far.

usage: httpserver.py REPORT        report: "<pid> <port>"
"""

import sys

from _report import QuietHandler, serve_http

answered = 0


class Counter(QuietHandler):
    protocol_version = "HTTP/1.1"  # connections stay open between requests

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        global answered
        answered += 1
        self.reply(200, f"{answered}\n".encode())


serve_http(Counter, sys.argv[1])
