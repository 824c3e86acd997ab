"""SnapdError -> gRPC status and trailers: the one place errors are translated (containerd's errgrpc).

Every failure a call ends with carries, besides the status code and message,
the trailers ``snapd-error`` (the class name) and ``snapd-exit-code`` (the CLI
exit code), so clients map it back without parsing messages. Anything that is
not a SnapdError becomes INTERNAL with its type named; the daemon log holds
the traceback.
"""

from __future__ import annotations

from typing import NoReturn

import grpc

from snapd_daemon.errors import SnapdError


def code_of(err: SnapdError) -> grpc.StatusCode:
    return grpc.StatusCode[err.status]


def internal(exc: BaseException) -> SnapdError:
    return SnapdError(detail=f"internal error: {type(exc).__name__}: {exc}")


def abort(context: grpc.ServicerContext, err: SnapdError) -> NoReturn:
    """End the call with ``err``'s status, message and trailers."""
    context.set_trailing_metadata((("snapd-error", type(err).__name__), ("snapd-exit-code", str(err.exit_code))))
    context.abort(code_of(err), err.message)
