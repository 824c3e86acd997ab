"""The record of one snapshot: what was checkpointed, where, and how big."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from snapd_daemon.processes import ProcessRecord

FORMAT_VERSION = 1


def new_snapshot_id() -> str:
    """Sortable and unique: UTC creation second plus 48 random bits."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(6)


@dataclass(frozen=True)
class ImageEntry:
    name: str
    size_bytes: int


@dataclass
class Manifest:
    id: str
    name: str
    labels: dict[str, str]
    created: float
    root_pid: int
    processes: list[ProcessRecord]
    criu_version: str
    kernel: str
    hostname: str
    shell_job: bool
    leave_running: bool
    files: list[ImageEntry] = field(default_factory=list)
    stored_bytes: int = 0
    checkpoint_seconds: float = 0.0
    format_version: int = FORMAT_VERSION

    @property
    def raw_bytes(self) -> int:
        return sum(f.size_bytes for f in self.files)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data: dict[str, Any] = json.loads(text)
        data["processes"] = [
            ProcessRecord(**{**p, "cmdline": tuple(p["cmdline"])}) for p in data["processes"]
        ]
        data["files"] = [ImageEntry(**f) for f in data["files"]]
        return cls(**data)
