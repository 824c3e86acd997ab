"""systemd notification for Type=notify: READY=1 once the API serves, STOPPING=1 on drain.

Outside systemd ($NOTIFY_SOCKET unset) it does nothing. The variable is taken
out of the environment at start so that CRIU and hooks do not inherit it.
"""

from __future__ import annotations

import os
import socket

import structlog

log = structlog.get_logger()


class Notifier:
    def __init__(self) -> None:
        address = os.environ.pop("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address

    def send(self, state: str) -> None:
        if not self.address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self.address)
                sock.sendall(state.encode())
        except OSError as exc:
            log.warning("sdnotify.failed", state=state, error=str(exc))
