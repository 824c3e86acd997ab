"""structlog set-up: JSON lines when stderr is not a terminal, readable text when it is.

Operation code binds ``op`` (the operation id) with ``structlog.contextvars``
so that every line logged while serving that operation carries it.

Logging never fails an operation: each line goes to stderr's file descriptor in one
``write``, and a line the OS refuses (the log file's disk is full, the reader of a pipe
went away, stderr was closed) is dropped and counted (``dropped()``, in `snapd status`);
the first line written after drops says how many were lost.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading

import structlog

_lock = threading.Lock()
_dropped = 0
_unreported = 0


def dropped() -> int:
    """Log lines dropped since the daemon started because they could not be written."""
    return _dropped


class LineLogger:
    """A structlog logger writing each rendered line to file descriptor ``fd`` (None: nowhere)."""

    def __init__(self, fd: int | None, json_output: bool) -> None:
        self.fd = fd
        self.json_output = json_output

    def msg(self, message: str) -> None:
        global _dropped, _unreported
        with _lock:
            if _unreported and self._write(self._drop_note(_unreported)):
                _unreported = 0
            if not self._write(message):
                _dropped += 1
                _unreported += 1

    log = debug = info = warn = warning = error = err = critical = exception = fatal = failure = msg

    def _write(self, line: str) -> bool:
        if self.fd is None:
            return False
        data = (line + "\n").encode(errors="replace")
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError:
            return False
        return True

    def _drop_note(self, count: int) -> str:
        if self.json_output:
            return json.dumps({"event": "log.lines_dropped", "count": count, "level": "warning"})
        return f"[warning] log.lines_dropped count={count} (they could not be written)"


def _stderr_fd() -> int | None:
    """stderr's file descriptor, or None when the daemon was started without one."""
    if sys.stderr is None:
        return None
    try:
        return sys.stderr.fileno()
    except (OSError, ValueError):
        return None


def _reserve_standard_fds() -> None:
    """Open /dev/null on a closed stdin, stdout or stderr, so that no file the daemon opens
    later takes its number (and receives what a child such as CRIU writes there)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def configure(level: str = "info", json_output: bool | None = None) -> None:
    fd = _stderr_fd()
    _reserve_standard_fds()
    if json_output is None:
        json_output = fd is None or not os.isatty(fd)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer(colors=False)
    )
    logger = LineLogger(fd, json_output)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=lambda *_args: logger,
        cache_logger_on_first_use=True,
    )
