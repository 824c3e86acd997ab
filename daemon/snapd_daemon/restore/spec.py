"""What a restore is asked (``RestoreSpec``, made from the API's RestoreRequest in
api/requests.py) and what a successful one returns (``RestoreOutcome``, the
RestoreResult in api/convert.py); the restore itself is run.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from snapd_daemon.host.cgroups import CgroupRequest
from snapd_daemon.host.hooks import Hook


@dataclass(frozen=True)
class RestoreSpec:
    ref: str
    # seconds to wait for exiting holders of the snapshot's pids (None: Settings.pid_wait_seconds; 0: none)
    wait_seconds: float | None = None
    gpu_uuid_map: dict[str, str] = field(default_factory=dict)
    post_hook: Hook | None = None
    cgroup: CgroupRequest | None = None
    # file in the restore log directory for outward stdio pipes ("": "<snapshot id>.log")
    log_name: str = ""
    # a snapshot's established TCP connections: "close" or "reestablish"
    tcp: str = "close"
    # host address a copy with its own network namespace publishes its ports on
    publish_host: str = "127.0.0.1"
    # "shared" or "exclusive" (host/gpuplace.py); "": the daemon's gpu_policy
    gpu_policy: str = ""
    # restore into the sandbox of this host pid (restore/into.py); 0: none
    into: int = 0
    # wait for the snapshot's readiness probe (None: when it has one); verify its answer
    wait_ready: bool | None = None
    verify: bool = False


@dataclass(frozen=True)
class RestoreOutcome:
    snapshot_id: str
    root_pid: int  # host pids, here and in ``pids``
    pids: list[int]
    seconds: float
    # where the tree's outward stdio pipes write now (None: it had none)
    log_path: Path | None = None
    # port inside the tree's network namespace -> host address it is published on
    published: dict[int, str] = field(default_factory=dict)
    # snapshot GPU UUID -> GPU UUID the tree runs on
    gpus: dict[str, str] = field(default_factory=dict)
    # (bytes, chunks) fetched from the remote tier for this restore
    pulled: tuple[int, int] = (0, 0)
    # the instance the tree is, and its cgroup as /proc/<pid>/cgroup shows it ("": none asked for)
    instance_id: str = ""
    cgroup: str = ""
    # seconds from the start to ready (None: its probe runs on), and the verified answer's digest
    ready_seconds: float | None = None
    verified: str = ""
