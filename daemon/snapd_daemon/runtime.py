"""What every operation needs, built once at daemon start."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from snapd_daemon.criu.binary import Criu
from snapd_daemon.operations import OperationRegistry
from snapd_daemon.store import DirectoryStore


@dataclass(frozen=True)
class Settings:
    state_dir: Path = Path("/var/lib/gpu-snapd")
    criu_path: str | None = None
    # CRIU log verbosity (0..4); 4 keeps enough context to explain failures.
    criu_log_level: int = 4
    # Seconds CRIU may take to freeze the tree at dump.
    freeze_timeout: int = 30
    # Default seconds a restore waits for exiting holders of the snapshot's pids.
    pid_wait_seconds: float = 10.0


@dataclass
class Runtime:
    settings: Settings
    criu: Criu
    store: DirectoryStore
    registry: OperationRegistry = field(default_factory=OperationRegistry)
    daemon_pid: int = field(default_factory=os.getpid)
