"""An HTTP server on 127.0.0.1 whose answers depend on files outside its memory, so that a
test changes them between checkpoint and restore: GET /health answers the status written
in DIR/health (200 while there is none); POST /plain answers the hex SHA-256 of the body
and DIR/salt; POST /answer answers {"answer": that digest, "served": requests so far}.

usage: answerer.py DIR REPORT        report: "<pid> <port>"
"""

import hashlib
import json
import sys
from pathlib import Path

from _report import QuietHandler, serve_http

DIR = Path(sys.argv[1])
served = 0


def _read(name: str, default: str) -> str:
    try:
        return (DIR / name).read_text().strip()
    except FileNotFoundError:
        return default


class Answerer(QuietHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.reply(int(_read("health", "200")), b"health\n")

    def do_POST(self) -> None:  # noqa: N802
        global served
        served += 1
        asked = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        digest = hashlib.sha256(asked + _read("salt", "").encode()).hexdigest()
        body = digest.encode() if self.path == "/plain" else json.dumps({"answer": digest, "served": served}).encode()
        self.reply(200, body)


serve_http(Answerer, sys.argv[2])
