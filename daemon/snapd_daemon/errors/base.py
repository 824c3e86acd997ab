"""General failures: the base class, bad requests, the daemon itself, cancels."""

from __future__ import annotations

from typing import Any, ClassVar


class SnapdError(Exception):
    """{detail}"""

    exit_code: ClassVar[int] = 1
    status: ClassVar[str] = "INTERNAL"

    def __init__(self, **fields: Any) -> None:
        self.fields = fields
        template = (type(self).__doc__ or "{detail}").strip()
        try:
            message = template.format(**fields)
        except (KeyError, IndexError):
            message = f"{template} {fields}"
        super().__init__(message)

    @property
    def message(self) -> str:
        return str(self)


class InvalidRequest(SnapdError):
    """invalid {field}: {reason}"""

    exit_code = 10
    status = "INVALID_ARGUMENT"


class ShuttingDown(SnapdError):
    """the daemon is shutting down and accepts no new operations; retry once it is back."""

    exit_code = 20
    status = "UNAVAILABLE"


class PermissionDenied(SnapdError):
    """permission denied: {reason}"""

    exit_code = 42
    status = "PERMISSION_DENIED"


class DaemonNotRoot(SnapdError):
    """`snapd serve` runs as root (CRIU needs CAP_SYS_ADMIN, CAP_SYS_PTRACE and more to dump and restore other users' processes), not as uid {uid}: run it as root (`sudo snapd serve ...` where sudo exists), or through gpu-snapd.service (docs/operating.md). `snapd serve --check-config` works as any user."""

    exit_code = 48
    status = "FAILED_PRECONDITION"


class ConfigInvalid(SnapdError):
    """invalid configuration ({source}): {reason}"""

    exit_code = 43
    status = "FAILED_PRECONDITION"


class Cancelled(SnapdError):
    """operation {operation_id} was cancelled before its commit point ({why}); {undone}"""

    exit_code = 45
    status = "CANCELLED"


def describe_exception(exc: BaseException) -> str:
    """What an unexpected exception says, in words, without Python's class name (which means
    nothing to a user): a missing key, a file error without "[Errno N]", else its message."""
    if isinstance(exc, KeyError) and exc.args:
        return f"the field {exc.args[0]!r} is missing"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    if isinstance(exc, UnicodeDecodeError):
        return "it is not UTF-8 text"
    return str(exc).strip() or "no detail was given"
