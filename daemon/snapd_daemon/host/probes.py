"""Readiness probes and answer checks, sent as the process tree itself would send them.

A URL a tree's server listens on (``http://127.0.0.1:8000/health``) is valid in the
tree's network namespace, which is not the daemon's for a tree started with `snapd
run --netns` (its ports are published elsewhere after a restore) or one restored
into a pod. So every request goes out from the namespace of the tree's root: a
short-lived thread enters ``/proc/PID/ns/net`` (setns), creates the socket there and
returns to the daemon's namespace before it ends; the socket stays in the tree's
namespace (a socket belongs to the namespace it was created in), and is connected
and used from any thread. A command probe runs under ``nsenter --net`` likewise.

Nothing here retries: restore/readiness.py decides how often and how long.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import socket
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass

import blake3

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
# how much of an answer is read (a larger one is an answer all the same: its digest covers this much)
MAX_ANSWER = 64 << 20
_SHOWN = 200  # characters of a failing command's output quoted in its result
_CLOSE_WAIT = 2.0  # seconds an answered request waits for the server to close the connection


class ProbeFailed(Exception):
    """No answer: what happened, in words (connection refused, timed out, exit status 1: ...)."""


@dataclass(frozen=True)
class ReadyProbe:
    """GET ``url`` until it answers ``status``, or run ``command`` until it exits 0."""

    url: str = ""
    status: int = 200
    command: str = ""
    timeout: float = 60.0

    def describe(self) -> str:
        return f"GET {self.url} -> {self.status}" if self.url else f"command {self.command!r} -> exit 0"

    def attempt(self, pid: int, timeout: float) -> str:
        """One try from ``pid``'s network namespace: "" when it passed, else its result in words."""
        if self.command:
            return run_command(pid, self.command, timeout)
        try:
            status, _ = http_request(pid, "GET", self.url, None, timeout)
        except ProbeFailed as exc:
            return str(exc)
        return "" if status == self.status else f"status {status}"


@dataclass(frozen=True)
class AnswerCheck:
    """POST ``body`` to ``url``; ``status`` and ``digest`` are the answer recorded at checkpoint
    (the digest covers the whole body, or only the top-level ``json_field`` of a JSON answer)."""

    url: str
    body: str
    json_field: str = ""
    timeout: float = 30.0
    status: int = 0
    digest: str = ""

    def describe(self) -> str:
        part = f"field {self.json_field!r} of " if self.json_field else ""
        return f"POST {self.url} ({len(self.body.encode())} bytes) -> status {self.status}, {part}answer {self.digest}"

    def ask(self, pid: int, timeout: float) -> tuple[int, str]:
        """(status, digest) of the answer from ``pid``'s network namespace; ProbeFailed without one."""
        status, answer = http_request(pid, "POST", self.url, self.body.encode(), timeout)
        return status, answer_digest(answer, self.json_field)


def answer_digest(answer: bytes, json_field: str) -> str:
    """BLAKE3 (hex) of ``answer``, or of the canonical JSON of its top-level ``json_field``
    ("no-field:..." when the answer is no JSON object holding it: never a valid digest)."""
    if not json_field:
        return blake3.blake3(answer).hexdigest()
    try:
        value = json.loads(answer)[json_field]
    except (ValueError, KeyError, TypeError):
        return f"no-field:{json_field}"
    return blake3.blake3(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def socket_in(pid: int, family: int) -> socket.socket:
    """A TCP socket of ``family`` created in ``pid``'s network namespace (see the module docstring)."""
    made: list[socket.socket] = []
    failed: list[OSError] = []

    def make() -> None:
        try:
            with open(f"/proc/{pid}/ns/net", "rb") as target, open("/proc/thread-self/ns/net", "rb") as own:
                _setns(target.fileno())
                try:
                    made.append(socket.socket(family, socket.SOCK_STREAM))
                finally:
                    _setns(own.fileno())
        except OSError as exc:
            failed.append(exc)

    thread = threading.Thread(target=make, name=f"netns-{pid}")
    thread.start()
    thread.join()
    if failed:
        for sock in made:  # made, but the thread could not switch back: not to be trusted
            sock.close()
        raise ProbeFailed(f"cannot enter the network namespace of pid {pid}: {failed[0].strerror or failed[0]}")
    return made[0]


def _connect(pid: int, host: str, port: int, timeout: float) -> socket.socket:
    """A socket of ``pid``'s namespace connected to ``host``:``port``, each address the name
    resolves to tried in turn (``localhost`` may give ::1 first to an IPv4-only server)."""
    last: OSError | None = None
    for family, _, _, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = socket_in(pid, family)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise last or OSError(0, f"{host} resolves to no address")


def http_request(pid: int, method: str, url: str, body: bytes | None, timeout: float) -> tuple[int, bytes]:
    """(status, body) of one request sent from ``pid``'s network namespace; ProbeFailed saying
    why there is no answer (refused, reset, timed out, no such namespace). The request asks
    the server to close the connection, and returns once it has (or ``_CLOSE_WAIT`` later):
    a connection the tree still held would be an established TCP connection in the snapshot
    that a checkpoint right after must refuse."""
    parts = urllib.parse.urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host, port = parts.hostname or "", parts.port or 80
    head = f"{method} {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    deadline = time.monotonic() + max(timeout, 0.05)
    try:
        with _connect(pid, host, port, max(timeout, 0.05)) as sock:
            sock.sendall(head.encode() + b"\r\n" + (body or b""))
            answer = http.client.HTTPResponse(sock, method=method)
            answer.begin()
            data = answer.read(MAX_ANSWER)
            close_by = time.monotonic() + max(0.01, min(_CLOSE_WAIT, deadline - time.monotonic()))
            with contextlib.suppress(OSError):
                while (left := close_by - time.monotonic()) > 0:  # until the server has closed its end
                    sock.settimeout(left)
                    if not sock.recv(65536):
                        break
            return answer.status, data
    except TimeoutError:
        raise ProbeFailed(f"no answer within {timeout:.1f} s") from None
    except (OSError, http.client.HTTPException) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        raise ProbeFailed(reason) from None


def run_command(pid: int, command: str, timeout: float) -> str:
    """``sh -c command`` in ``pid``'s network namespace: "" when it exits 0, else what happened."""
    try:
        done = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "--", "sh", "-c", command],
                              env={**os.environ, "SNAPD_PID": str(pid)}, stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=max(timeout, 0.05), check=False)
    except subprocess.TimeoutExpired:
        return f"still running after {timeout:.1f} s"
    except OSError as exc:
        return f"cannot run nsenter: {exc.strerror or exc}"
    if done.returncode == 0:
        return ""
    said = (done.stderr or done.stdout).decode(errors="replace").strip()[-_SHOWN:]
    return f"exit status {done.returncode}" + (f": {said}" if said else "")
