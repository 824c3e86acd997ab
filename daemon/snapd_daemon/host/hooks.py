"""Operator commands run by the daemon around an operation (e.g. an HTTP call
that asks a vLLM server to drop its KV cache before a snapshot, or to wake up
after a restore).

A hook's argv is bounded (count and total size) when the request is parsed,
since it is echoed in its failure message and in log lines.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

import structlog

from snapd_daemon.errors import HookFailed, InvalidRequest

log = structlog.get_logger()
MAX_ARGS = 64
MAX_ARGV_BYTES = 32 << 10  # all arguments together, UTF-8
MAX_TIMEOUT = 3600


@dataclass(frozen=True)
class Hook:
    argv: tuple[str, ...]
    timeout: float = 60.0

    @classmethod
    def parse(cls, field: str, argv: list[str], timeout_seconds: int) -> Hook | None:
        if not argv:
            return None
        if len(argv) > MAX_ARGS or any(not a or "\0" in a for a in argv):
            raise InvalidRequest(field=field, reason=f"argv must be 1-{MAX_ARGS} non-empty arguments")
        size = sum(len(a.encode()) for a in argv)
        if size > MAX_ARGV_BYTES:
            raise InvalidRequest(field=field, reason=f"argv is {size} bytes, at most {MAX_ARGV_BYTES} allowed")
        if timeout_seconds > MAX_TIMEOUT:
            raise InvalidRequest(field=field, reason=f"timeout {timeout_seconds} s is above {MAX_TIMEOUT} s")
        return cls(tuple(argv), float(timeout_seconds or 60))

    def run(self, name: str, env: dict[str, str], rollback: str = "") -> None:
        """Run to completion; raises HookFailed on a non-zero exit, a timeout, or a missing program."""
        try:
            proc = subprocess.run(
                self.argv, env={**os.environ, **env}, capture_output=True, text=True, timeout=self.timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise HookFailed(hook=name, argv=list(self.argv), reason=f"no exit after {self.timeout:.0f} s",
                             rollback=rollback) from None
        except OSError as exc:
            raise HookFailed(hook=name, argv=list(self.argv), reason=str(exc), rollback=rollback) from exc
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise HookFailed(hook=name, argv=list(self.argv), reason=f"exit status {proc.returncode}: "
                             + " | ".join(tail), rollback=rollback)
        log.info("hook.done", hook=name, argv=list(self.argv))
