"""Checks on caller-supplied names and labels (pids are checked in processes)."""

from __future__ import annotations

import re

from snapd_daemon.errors import InvalidRequest

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
LABEL_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,62}")
MAX_LABELS = 32
MAX_LABEL_VALUE = 256
MAX_REF = 256


def snapshot_name(name: str) -> str:
    if name and not NAME_RE.fullmatch(name):
        shown = name if len(name) <= 40 else name[:40] + f"... ({len(name)} chars)"
        raise InvalidRequest(
            field="name",
            reason=f"{shown!r} must be 1-128 characters of A-Z a-z 0-9 . _ - starting with a letter or digit",
        )
    return name


def labels(values: dict[str, str]) -> dict[str, str]:
    if len(values) > MAX_LABELS:
        raise InvalidRequest(field="labels", reason=f"{len(values)} labels given, at most {MAX_LABELS} allowed")
    for key, value in values.items():
        if not LABEL_KEY_RE.fullmatch(key):
            raise InvalidRequest(
                field="labels", reason=f"key {key[:70]!r} must be 1-63 characters of A-Z a-z 0-9 . _ / -"
            )
        if len(value) > MAX_LABEL_VALUE or any(ord(c) < 32 for c in value):
            raise InvalidRequest(
                field="labels",
                reason=f"value of {key!r} must be at most {MAX_LABEL_VALUE} printable characters",
            )
    return dict(values)


def snapshot_ref(ref: str) -> str:
    if not ref:
        raise InvalidRequest(field="snapshot", reason="empty; give a snapshot id or name")
    if len(ref) > MAX_REF or "/" in ref or ref in (".", "..") or any(ord(c) < 32 for c in ref):
        raise InvalidRequest(field="snapshot", reason=f"{ref[:40]!r} is not a snapshot id or name")
    return ref


GPU_UUID_RE = re.compile(r"GPU-[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def gpu_uuid_map(mapping: dict[str, str]) -> dict[str, str]:
    for old, new in mapping.items():
        for uuid in (old, new):
            if not GPU_UUID_RE.fullmatch(uuid):
                raise InvalidRequest(field="gpu_uuid_map", reason=f"{uuid[:60]!r} is not a GPU UUID (GPU-xxxxxxxx-...)")
    return dict(mapping)
