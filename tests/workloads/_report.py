"""Shared by the workloads: atomic status reports the tests read."""

import os
import signal
import socket
from collections.abc import Callable


def write_report(path: str, text: str) -> None:
    """Replace ``path`` atomically; no file descriptor stays open (CRIU-friendly)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def on_usr1(handler: Callable[[], None]) -> None:
    signal.signal(signal.SIGUSR1, lambda _sig, _frame: handler())


def tell(path: str, line: str) -> None:
    """Send ``line`` to the unix stream socket at ``path``; connected only meanwhile."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendall(f"{line}\n".encode())
