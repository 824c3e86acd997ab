"""Shared by the workloads: atomic status reports the tests read."""

import ctypes
import hashlib
import mmap
import os
import signal
import socket
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def write_report(path: str, text: str) -> None:
    """Replace ``path`` atomically; no file descriptor stays open (CRIU-friendly)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def on_usr1(handler: Callable[[], None]) -> None:
    signal.signal(signal.SIGUSR1, lambda _sig, _frame: handler())


def openpty_aside(spare: int = 16) -> tuple[int, int]:
    """os.openpty(), its index above the lowest ``spare`` free ones: a restore needs the
    pty's index free again (CRIU makes the pair anew at that index, reached by opening at
    most 32 new ones), and other processes on a busy host take the lowest free index first."""
    held = [fd for _ in range(spare) for fd in os.openpty()]
    try:
        return os.openpty()
    finally:
        for fd in held:
            os.close(fd)


def tell(path: str, line: str) -> None:
    """Send ``line`` to the unix stream socket at ``path``; connected only meanwhile."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendall(f"{line}\n".encode())


def guarded_region(size: int) -> memoryview:
    """``size`` bytes of a private anonymous mapping of their own between PROT_NONE guard pages,
    so the region never merges with a neighbour and chunks the same way in every process."""
    page = mmap.PAGESIZE
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    area = mmap.mmap(-1, size + 2 * page, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    base = ctypes.addressof(ctypes.c_char.from_buffer(area))
    for guard in (base, base + page + size):
        if libc.mprotect(guard, page, 0) != 0:
            raise OSError(ctypes.get_errno(), "mprotect of a guard page failed")
    return memoryview(area)[page : page + size]


def hold_digest(path: str, data: Callable[[], bytes | bytearray]) -> None:
    """Report "<pid> <sha256 of data()> <checks so far>" now and on every SIGUSR1; idle for ever."""
    checks = 0

    def check() -> None:
        nonlocal checks
        checks += 1
        write_report(path, f"{os.getpid()} {hashlib.sha256(data()).hexdigest()} {checks}")

    on_usr1(check)  # first: once the report exists, a SIGUSR1 is answered, never fatal
    check()
    while True:
        time.sleep(0.05)


class QuietHandler(BaseHTTPRequestHandler):
    """An HTTP handler that logs nothing and answers with ``reply``."""

    def reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


def serve_http(handler: type[BaseHTTPRequestHandler], report: str, address: tuple[str, int] = ("127.0.0.1", 0)) -> None:
    """Serve ``handler`` on ``address`` (default: 127.0.0.1, at a port the kernel chooses),
    reporting "<pid> <port>"."""
    server = ThreadingHTTPServer(address, handler)
    server.daemon_threads = True
    write_report(report, f"{os.getpid()} {server.server_address[1]}")
    server.serve_forever()
