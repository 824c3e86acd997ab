"""What a snapshot may be called and labelled: the rules a checkpoint request and an import
both answer to (one place, so that the API and an imported manifest never differ).

A name is 1-128 characters of A-Z a-z 0-9 . _ - starting with a letter or digit. At most
MAX_LABELS labels; a key is 1-63 characters of A-Z a-z 0-9 . _ / - starting with a
letter or digit, whose "/"-separated parts are neither empty nor "." or ".."; a value
is at most MAX_LABEL_VALUE characters, none of them a control or format character
(newlines, terminal escapes, bidirectional overrides), so that whatever prints a name or
a label prints one line of what was given. An imported manifest's host fields answer to
the same rule as a label value.
"""

from __future__ import annotations

import re
import unicodedata

from snapd_daemon.errors import InvalidRequest

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
LABEL_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,62}")
MAX_LABELS = 32
MAX_LABEL_VALUE = 256


def snapshot_name(name: str) -> str:
    if not isinstance(name, str) or (name and not NAME_RE.fullmatch(name)):
        shown = name if not isinstance(name, str) or len(name) <= 40 else name[:40] + f"... ({len(name)} chars)"
        raise InvalidRequest(
            field="name",
            reason=f"{shown!r} must be 1-128 characters of A-Z a-z 0-9 . _ - starting with a letter or digit",
        )
    return name


def labels(values: dict[str, str]) -> dict[str, str]:
    if len(values) > MAX_LABELS:
        raise InvalidRequest(field="labels", reason=f"{len(values)} labels given, at most {MAX_LABELS} allowed")
    for key, value in values.items():
        if not LABEL_KEY_RE.fullmatch(key) or any(part in ("", ".", "..") for part in key.split("/")):
            raise InvalidRequest(
                field="labels", reason=f"key {key[:70]!r} must be 1-63 characters of A-Z a-z 0-9 . _ / - starting "
                "with a letter or digit, without empty, '.' or '..' parts between the '/'"
            )
        if not printable(value, MAX_LABEL_VALUE):
            raise InvalidRequest(
                field="labels",
                reason=f"value of {key!r} must be at most {MAX_LABEL_VALUE} printable characters",
            )
    return dict(values)


def printable(value: str, limit: int) -> bool:
    """At most ``limit`` characters, none a control or format character."""
    return len(value) <= limit and not any(unicodedata.category(c) in ("Cc", "Cf") for c in value)


def recorded_text(fields: dict[str, str]) -> None:
    """What a snapshot records of its host (hostname, kernel, CRIU version), as an imported
    manifest says it: printable, at most MAX_LABEL_VALUE characters each; InvalidRequest
    naming the first field that is not."""
    for name, value in fields.items():
        if not printable(value, MAX_LABEL_VALUE):
            raise InvalidRequest(field=name, reason=f"must be at most {MAX_LABEL_VALUE} printable characters, "
                                 f"not {value[:40]!r}")
