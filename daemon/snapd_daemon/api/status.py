"""SnapdError -> gRPC status and trailers: the one place errors are translated (containerd's errgrpc).

Every failure a call ends with carries, besides the status code and message,
the trailers ``snapd-error`` (the class name) and ``snapd-exit-code`` (the CLI
exit code), so clients map it back without parsing messages. Anything that is
not a SnapdError becomes INTERNAL saying what failed and that the daemon log
holds the traceback (never a Python class name). A message is at most
``MAX_MESSAGE`` characters (its start kept, the cut said), so that no
caller-supplied text (a hook's argv or output) can push the trailers past
gRPC's metadata limit.
"""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import grpc

from snapd_daemon.errors import SnapdError, SpaceFull, describe_exception
from snapd_daemon.store import oserrors

MAX_MESSAGE = 2000


def code_of(err: SnapdError) -> grpc.StatusCode:
    return grpc.StatusCode[err.status]


def internal(exc: BaseException, what: str, state_dir: Path) -> SnapdError:
    """An unexpected failure of ``what`` (e.g. "restore op-0123456789ab"): what it says, without
    Python's class name, and where the traceback is. A full file system that a path did not
    map itself is still SpaceFull (exit 18), never INTERNAL."""
    if isinstance(exc, OSError):
        full = oserrors.full(exc, state_dir, 0)
        if full is not None:
            return full.recast(SpaceFull, doing=what)
    return SnapdError(detail=f"internal error: {what} failed unexpectedly ({describe_exception(exc)}); the "
                      "daemon's log has the traceback (journalctl -u gpu-snapd). Please report it.")


def bounded(message: str) -> str:
    """``message``, or its first MAX_MESSAGE characters and how many more were cut."""
    if len(message) <= MAX_MESSAGE:
        return message
    return f"{message[:MAX_MESSAGE]}... ({len(message) - MAX_MESSAGE} more characters cut)"


def abort(context: grpc.ServicerContext, err: SnapdError) -> NoReturn:
    """End the call with ``err``'s status, (bounded) message and trailers."""
    context.set_trailing_metadata((("snapd-error", type(err).__name__), ("snapd-exit-code", str(err.exit_code))))
    context.abort(code_of(err), bounded(err.message))
