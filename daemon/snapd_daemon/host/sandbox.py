"""A container or pod sandbox a restore goes into (``snapd restore --into PID``).

A sandbox is named by any process of it: a pod's infra (pause) process, or a
container's. ``open_sandbox`` checks that the pid lives and is not a host
process (a sandbox has a network namespace other than the daemon's), and holds
its network, UTS and IPC namespaces open until the restore ends: CRIU's root
task enters exactly those (CRIU's join_ns, given the daemon's fds as
/proc/<daemon>/fd/N), whatever happens to the pid meanwhile, and a namespace
held open keeps its inode, so ``check_joined`` can tell after CRIU returns
whether the tree really is in them (CRIU makes a namespace anew, after the
join, for one the images hold: a tree dumped with a namespace of its own
would silently keep it).

Its cgroup: ``placement`` makes a new group below the pid's cgroup v2 group,
so every limit of the sandbox's group and its ancestors applies to the tree;
a snapshot that cannot fit under their memory.max / pids.max (less what they
use) is refused with the figures, before anything is restored. The group is
removed when the restore fails, and by the instance when the tree ends
(``remove_group``). A sandbox whose process ends (the pod was deleted) takes the
tree with it: the instance watches that process and SIGKILLs the tree's root
(``kill_root``; the init of its pid namespace, so the kernel ends the rest).
Its GPUs: ``visible_gpus`` reads the pid's NVIDIA_VISIBLE_DEVICES, to which the
GPU placement is then restricted.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field

import psutil
import structlog

from snapd_daemon.errors import CgroupFailed, SandboxJoinFailed, SandboxNotFound
from snapd_daemon.host.cgroups import Cgroup, Needs, cgroup2_mount, cgroup_of, check_fits
from snapd_daemon.host.reaper import open_pidfd

log = structlog.get_logger()

JOINED = ("net", "uts", "ipc")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def visible_gpus(value: str | None) -> tuple[str, ...] | None:
    """The GPUs an NVIDIA_VISIBLE_DEVICES value names (UUIDs or indices, as given); None when
    it restricts nothing (unset, empty, "all"); () for "none" / "void" (no GPU at all)."""
    if value is None or value.strip() in ("", "all"):
        return None
    if value.strip() in ("none", "void"):
        return ()
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _environ(pid: int, name: str) -> str | None:
    with open(f"/proc/{pid}/environ", "rb") as f:
        for entry in f.read().split(b"\0"):
            key, sep, value = entry.partition(b"=")
            if sep and key.decode(errors="replace") == name:
                return value.decode(errors="replace")
    return None


@dataclass
class Sandbox:
    """The sandbox of ``pid``: its namespaces held open (kind -> fd), its cgroup v2 group
    ("" without cgroup2) and the GPUs it may use (None: not restricted)."""

    pid: int
    start_time: float
    cgroup: str
    gpus: tuple[str, ...] | None
    fds: dict[str, int] = field(default_factory=dict)

    def join(self) -> list[tuple[str, str]]:
        """(namespace kind, file) for CRIU's join_ns: the namespaces held here."""
        return [(kind, f"/proc/{os.getpid()}/fd/{fd}") for kind, fd in self.fds.items()]

    def check_joined(self, snapshot_id: str, pid: int) -> None:
        """SandboxJoinFailed unless ``pid`` (the restored root) is in each namespace held here."""
        for kind, fd in self.fds.items():
            try:
                inode = os.stat(f"/proc/{pid}/ns/{kind}").st_ino
            except OSError as exc:
                raise SandboxJoinFailed(snapshot_id=snapshot_id, pid=self.pid,
                                        reason=f"cannot read the restored root {pid}'s {kind} namespace: "
                                        f"{exc.strerror}") from exc
            if inode != os.fstat(fd).st_ino:
                raise SandboxJoinFailed(
                    snapshot_id=snapshot_id, pid=self.pid,
                    reason=f"the restored root {pid} is in {kind} namespace {inode}, not the sandbox's "
                    f"{os.fstat(fd).st_ino} (its images hold a {kind} namespace of their own, which CRIU made anew)")

    def check_alive(self) -> None:
        """SandboxNotFound when the sandbox's process has ended (or its pid was reused) since it was opened."""
        try:
            alive = psutil.Process(self.pid).create_time() == self.start_time
        except psutil.NoSuchProcess:
            alive = False
        if not alive:
            raise SandboxNotFound(pid=self.pid, reason="it ended during the restore")

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}


@contextlib.contextmanager
def open_sandbox(pid: int) -> Iterator[Sandbox]:
    """The sandbox ``pid`` is a process of, its namespaces held for the block; SandboxNotFound
    for a pid that is gone, the daemon's own, or a host process (the daemon's network namespace)."""
    if pid <= 0:
        raise SandboxNotFound(pid=pid, reason="not a pid")
    if pid == os.getpid():
        raise SandboxNotFound(pid=pid, reason="it is the daemon itself")
    box = Sandbox(pid=pid, start_time=0.0, cgroup="", gpus=None)
    try:
        box.start_time = psutil.Process(pid).create_time()
        for kind in JOINED:
            box.fds[kind] = os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
        box.cgroup = cgroup_of(pid)
        box.gpus = visible_gpus(_environ(pid, "NVIDIA_VISIBLE_DEVICES"))
        if psutil.Process(pid).create_time() != box.start_time:
            raise psutil.NoSuchProcess(pid)
    except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError) as exc:
        box.close()
        raise SandboxNotFound(pid=pid, reason="no such process (it has ended)") from exc
    except BaseException:
        box.close()
        raise
    try:
        if os.fstat(box.fds["net"]).st_ino == os.stat("/proc/self/ns/net").st_ino:
            raise SandboxNotFound(pid=pid, reason="it shares the daemon's network namespace: a host process, not one "
                                  "of a container or pod sandbox (which has a network namespace of its own)")
        log.info("sandbox.found", pid=pid, cgroup=box.cgroup, gpus=box.gpus,
                 namespaces={kind: os.fstat(fd).st_ino for kind, fd in box.fds.items()})
        yield box
    finally:
        box.close()


@contextlib.contextmanager
def placement(box: Sandbox, name: str, needs: Needs) -> Iterator[Cgroup]:
    """A new group ``name`` below the sandbox's cgroup v2 group, checked to fit ``needs``
    (CgroupTooSmall with the figures, before anything is restored); removed again when
    the block fails. The group itself sets no limit: the sandbox's and its ancestors' apply."""
    mount = cgroup2_mount()
    if mount is None or not box.cgroup:
        raise CgroupFailed(cgroup=box.cgroup or f"of pid {box.pid}",
                           reason="no cgroup v2 group: the tree cannot be placed below the sandbox's")
    path = f"{box.cgroup.rstrip('/')}/{name}"
    try:
        parent = os.open(mount / box.cgroup.lstrip("/"), _DIR_FLAGS)
    except OSError as exc:
        raise CgroupFailed(cgroup=box.cgroup, reason=f"cannot open the sandbox's group: {exc.strerror}") from exc
    cgroup = Cgroup(mount, [box.cgroup, path], [parent], [])
    with cgroup.held():
        try:
            os.mkdir(name, 0o755, dir_fd=parent)
            cgroup.created.append(mount / path.lstrip("/"))
            cgroup.fds.append(os.open(name, _DIR_FLAGS, dir_fd=parent))
        except OSError as exc:
            raise CgroupFailed(cgroup=path, reason=f"cannot create it: {exc.strerror}") from exc
        check_fits(cgroup, needs, {})
        log.info("sandbox.cgroup_created", cgroup=path)
        yield cgroup


def remove_group(path: str) -> None:
    """Remove the group (``/a/b``, as /proc/<pid>/cgroup shows it) a sandboxed tree was placed in,
    once its processes are gone (waiting a little for the last to be released); a failure is logged."""
    mount = cgroup2_mount()
    if mount is not None and path:
        Cgroup(mount, [path], [], [mount / path.lstrip("/")]).remove_created()


def kill_root(pid: int, started: float) -> bool:
    """SIGKILL the process (pid, start time), never another that took its pid; False when it is gone."""
    fd = open_pidfd(pid, started)
    if fd is None:
        return False
    try:
        signal.pidfd_send_signal(fd, signal.SIGKILL)
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)
    return True
