"""One exception class per daemon error class, all subclasses of SnapdClientError.

    try:
        client.restore("llama-8b")
    except errors.GpuRoomShort as err:      # exit_code 80; err.fields["room"]: per GPU figures
        ...
    except errors.SnapshotNotFound:
        ...
    except SnapdClientError as err:         # anything else: err.error_class, err.exit_code, err.message
        ...

The classes are built from errors.json, which scripts/gen-client-errors.py
generates from the daemon's errors (this package never imports the daemon);
a class's docstring is the daemon's message template, its ``exit_code`` and
``status`` the daemon's. The daemon's hierarchy is kept (RestoreSpaceFull is a
StoreFull). The daemon's internal errors (class SnapdError) raise
SnapdClientError itself. Two classes are the client's own: ``Unreachable``
(no daemon answered, exit 3) and ``DeadlineExceeded`` (the call's deadline
passed, exit 81).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import stat
from collections.abc import Callable
from importlib import resources
from typing import Any

import grpc

# Exit code when the daemon cannot be reached at all.
EXIT_UNREACHABLE = 3
# Exit code when a call's deadline passed before the daemon answered.
EXIT_DEADLINE = 81
# Exit code when this user may not use the daemon's socket (the daemon's PermissionDenied).
EXIT_PERMISSION_DENIED = 42


class SnapdClientError(Exception):
    """A failed call: ``code`` (gRPC status), ``error_class`` (the daemon's error class, e.g.
    "SnapshotNotFound"; "Unreachable" when no daemon answered), ``exit_code`` (the CLI's exit
    code for it), ``message`` (what went wrong and what to do) and ``fields`` (the values the
    daemon filled the message with: {"snapshot": "llama-8b"}, ...; {} when it sent none)."""

    def __init__(self, code: grpc.StatusCode, message: str, error_class: str, exit_code: int,
                 fields: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.error_class = error_class
        self.exit_code = exit_code
        self.fields = fields or {}


class Unreachable(SnapdClientError):
    """No daemon answered at the target."""


class DeadlineExceeded(SnapdClientError):
    """The call's deadline passed; an operation it started rolls back unless past its commit point."""


def _build() -> dict[str, type[SnapdClientError]]:
    table = json.loads(resources.files(__package__).joinpath("errors.json").read_text())["errors"]
    classes: dict[str, type[SnapdClientError]] = {"": SnapdClientError}
    for row in table:
        if not row["parent"]:
            classes[row["name"]] = SnapdClientError
            continue
        classes[row["name"]] = type(row["name"], (classes[row["parent"]],), {
            "__doc__": row["template"], "__module__": __name__, "exit_code": row["exit_code"],
            "status": row["status"]})
    return classes


# daemon error class name -> exception class ("SnapdError" and "": SnapdClientError)
CLASSES = _build()
globals().update({name: cls for name, cls in CLASSES.items() if cls is not SnapdClientError})
__all__ = ["CLASSES", "DeadlineExceeded", "SnapdClientError", "Unreachable", "from_rpc",
           *sorted(name for name, cls in CLASSES.items() if cls is not SnapdClientError)]


def from_rpc(err: grpc.RpcError, target: str, method: str = "", timeout: float | None = None) -> SnapdClientError:
    """The exception for a failed call to ``target``: the daemon's class from the call's trailers
    (``snapd-error``, ``snapd-exit-code``, ``snapd-fields``), else Unreachable or DeadlineExceeded."""
    code: grpc.StatusCode = err.code()  # type: ignore[attr-defined]
    details: str = err.details() or ""  # type: ignore[attr-defined]
    trailers = dict(err.trailing_metadata() or ())  # type: ignore[attr-defined]
    if "snapd-exit-code" in trailers:
        name = trailers.get("snapd-error", "")
        try:
            fields = json.loads(trailers.get("snapd-fields", "{}"))
        except ValueError:
            fields = {}
        return CLASSES.get(name, SnapdClientError)(code, details, name, int(trailers["snapd-exit-code"]), fields)
    if code == grpc.StatusCode.UNAVAILABLE:
        denied = socket_denied(target)
        if denied:
            return CLASSES["PermissionDenied"](code, denied, "PermissionDenied", EXIT_PERMISSION_DENIED)
        return Unreachable(
            code, f"cannot reach the snapd daemon at {target}: {details}. Is `snapd serve` running (systemctl "
            "status gpu-snapd)? Set --target / SNAPD_TARGET otherwise.", "Unreachable", EXIT_UNREACHABLE)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        deadline = f" of {timeout:g} s" if timeout is not None else ""
        return DeadlineExceeded(
            code, f"{method or 'the call'} passed its deadline{deadline} (the timeout argument); an operation "
            "it started rolls back unless it was past its commit point", "DeadlineExceeded", EXIT_DEADLINE,
            {"method": method, "timeout": timeout})
    if code == grpc.StatusCode.UNKNOWN:  # an exception escaped a handler: grpc names it, the user needs none
        details = details.removeprefix("Exception calling application:").removeprefix(
            "Exception iterating responses:").strip()
        return SnapdClientError(code, f"the daemon at {target} failed unexpectedly ({details or 'no detail'}); its "
                                "log has the traceback (journalctl -u gpu-snapd)", "", 1)
    return SnapdClientError(code, f"{code.name}: {details}", "", 1)


def socket_denied(target: str) -> str:
    """Why this user may not connect to ``target``'s unix socket (its owner, group and mode say
    who may), or "" when it is not a unix socket this user is refused."""
    path = target.removeprefix("unix://") if target.startswith("unix:///") else ""
    try:
        st = os.stat(path) if path else None
    except OSError:
        return ""
    if st is None or os.access(path, os.R_OK | os.W_OK):
        return ""
    owner, group = _name(pwd.getpwuid, st.st_uid), _name(grp.getgrgid, st.st_gid)
    return (f"permission denied: {path} (owner {owner}, group {group}, mode {stat.S_IMODE(st.st_mode):04o}) lets only "
            f"{owner} and members of group {group} connect, and uid {os.getuid()} is neither. Ask an administrator "
            f"to add you to the group (`usermod -aG {group} USER`, then log in again), or to name you in the "
            "daemon's allow_uid / allow_gid, or run as root")


def _name(lookup: Callable[[int], Any], number: int) -> str:
    try:
        return str(lookup(number)[0])
    except KeyError:
        return str(number)
