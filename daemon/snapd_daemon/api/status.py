"""SnapdError -> gRPC status and trailers: the one place errors are translated (containerd's errgrpc).

Every failure a call ends with carries, besides the status code and message,
the trailers ``snapd-error`` (the class name), ``snapd-exit-code`` (the CLI
exit code) and ``snapd-fields`` (the error's fields as a JSON object, its
values as JSON has them, anything else as text), so clients map it back
without parsing messages. The fields are bounded too: a string value at most
``MAX_FIELD`` characters, the whole at most ``MAX_FIELDS`` (the largest values
left out first, their names listed under "_cut"). Anything that is not a
SnapdError becomes INTERNAL saying what failed and that the daemon log holds
the traceback (never a Python class name). A message is at most
``MAX_MESSAGE`` characters (its start kept, the cut said), so that no
caller-supplied text (a hook's argv or output) can push the trailers past
gRPC's metadata limit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NoReturn

import grpc

from snapd_daemon.errors import SnapdError, SpaceFull, describe_exception
from snapd_daemon.store import oserrors

MAX_MESSAGE = 2000
MAX_FIELD = 500
MAX_FIELDS = 4000


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


def bounded(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text``, or its first ``limit`` characters and how many more were cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters cut)"


def fields_json(err: SnapdError) -> str:
    """``err.fields`` as a bounded JSON object (ASCII: a valid metadata value)."""
    fields: dict[str, Any] = {k: _short(v) for k, v in err.fields.items()}
    cut: list[str] = []
    text = json.dumps(fields, default=str, sort_keys=True)
    while len(text) > MAX_FIELDS:
        biggest = max(fields, key=lambda k: len(json.dumps(fields[k], default=str)))
        cut.append(biggest)
        del fields[biggest]
        text = json.dumps({**fields, "_cut": cut}, default=str, sort_keys=True)
    return text


def _short(value: Any) -> Any:
    if isinstance(value, str):
        return bounded(value, MAX_FIELD)
    if isinstance(value, int | float | list | dict) or value is None:
        return value
    return bounded(str(value), MAX_FIELD)


def abort(context: grpc.ServicerContext, err: SnapdError) -> NoReturn:
    """End the call with ``err``'s status, (bounded) message and trailers."""
    context.set_trailing_metadata((("snapd-error", type(err).__name__), ("snapd-exit-code", str(err.exit_code)),
                                   ("snapd-fields", fields_json(err))))
    context.abort(code_of(err), bounded(err.message))
