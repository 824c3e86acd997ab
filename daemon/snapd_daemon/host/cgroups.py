"""cgroup v2: where a restored tree lives, confined to the daemon's delegated root.

Placement. For a restore into a cgroup, the daemon opens (or creates) the
caller's group under the delegated root, writes the requested limits, checks
that the snapshot fits, and moves the `criu swrk` child into the group *before*
sending it the restore request. CRIU then runs with cgroup management off
(manage_cgroups_mode IGNORE), so every process it restores is forked inside the
group and its memory is charged there from the first page. CRIU's own
``cg_root`` rewrite is not used: it does nothing when the dump recorded no
cgroup sets (CRIU records none when the tree shared CRIU's cgroups), and its
controller-less form also rewrites the host's v1 hierarchies on a hybrid host
(a trial created and wrote groups under /sys/fs/cgroup/{memory,cpuset,...}).
The tree is placed whole: sub-groups the source used are not recreated.

Confinement. Caller paths are validated (see ``validation.cgroup_request``) and
then walked one component at a time from an fd of the delegated root with
O_NOFOLLOW, refusing anything that is not a directory on the root's own mount.
Every later write goes through the fds of that walk, so renaming or swapping
groups after the check cannot redirect it. (cgroupfs cannot hold symlinks; the
O_NOFOLLOW walk makes that a checked fact rather than an assumption.)
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from snapd_daemon.errors import (
    CgroupFailed,
    CgroupTooSmall,
    ConfigInvalid,
    InvalidRequest,
)

log = structlog.get_logger()

# Limit files recorded at checkpoint and writable at restore, with the controller each needs.
LIMIT_CONTROLLERS = {
    "memory.max": "memory",
    "cpu.max": "cpu",
    "pids.max": "pids",
    "cpuset.cpus": "cpuset",
    "cpuset.mems": "cpuset",
}
DEFAULT_ROOT_NAME = "gpu-snapd"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_RMDIR_WAIT_SECONDS = 10.0


def cgroup2_mount(mountinfo: Path = Path("/proc/self/mountinfo")) -> Path | None:
    """Where cgroup v2 is mounted: /sys/fs/cgroup on a unified host, /sys/fs/cgroup/unified
    on a hybrid one, else the first cgroup2 mount listed; None when there is none."""
    mounts = []
    for line in mountinfo.read_text().splitlines():
        before, _, after = line.partition(" - ")
        if after.split()[:1] == ["cgroup2"]:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), before.split()[4])
            mounts.append(Path(point))
    for preferred in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        if preferred in mounts:
            return preferred
    return mounts[0] if mounts else None


def cgroup_of(pid: int | str) -> str:
    """The cgroup v2 path of a process as /proc/<pid>/cgroup shows it ("/a/b"); "" if none."""
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].strip()
    return ""


@dataclass(frozen=True)
class CgroupRecord:
    """The cgroup v2 group a checkpointed tree's root lived in, and its limit files' contents."""

    path: str
    limits: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CgroupRecord:
        return cls(path=data["path"], limits=dict(data["limits"]))


def group_of(pid: int) -> tuple[Path, str] | None:
    """(cgroup2 mount, ``pid``'s group path "/a/b"); None without cgroup2 or without the pid."""
    mount = cgroup2_mount()
    try:
        path = cgroup_of(pid)
    except OSError:
        return None
    return (mount, path) if mount is not None and path else None


def describe(pid: int) -> CgroupRecord | None:
    """The cgroup v2 group of ``pid`` with those of its limit files that exist; None without cgroup2."""
    found = group_of(pid)
    if found is None:
        return None
    mount, path = found
    directory = mount / path.lstrip("/")
    limits = {}
    for name in LIMIT_CONTROLLERS:
        with contextlib.suppress(OSError):
            limits[name] = (directory / name).read_text().strip()
    return CgroupRecord(path=path, limits=limits)


@dataclass(frozen=True)
class Needs:
    """What a tree about to be restored will take: ``memory`` bytes (its image; a GPU
    snapshot's image holds the host copy of its VRAM) and ``tasks`` (its threads and CRIU)."""

    snapshot_id: str
    memory: int
    tasks: int


@dataclass(frozen=True)
class CgroupRequest:
    """A validated request: a group below the delegated root, and limit file -> value to write."""

    parts: tuple[str, ...]
    create: bool = False
    limits: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return "/".join(self.parts)


def _oserror(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else str(exc)


class Cgroup:
    """A group under the delegated root, open for the span of one restore.

    ``fds`` are the directories walked, from the delegated root down to the
    group; ``created`` the ones this placement made (removed again on failure).
    """

    def __init__(self, mount: Path, proc_paths: list[str], fds: list[int], created: list[Path]) -> None:
        self.mount = mount
        self.proc_paths = proc_paths
        self.fds = fds
        self.created = created

    @property
    def proc_path(self) -> str:
        """The group as /proc/<pid>/cgroup shows it, e.g. "/gpu-snapd/inference/llama"."""
        return self.proc_paths[-1]

    def _read(self, depth: int, name: str) -> str | None:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.fds[depth])
        except FileNotFoundError:
            return None
        try:
            return os.read(fd, 65536).decode().strip()
        finally:
            os.close(fd)

    def _write(self, depth: int, name: str, value: str) -> None:
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CLOEXEC, dir_fd=self.fds[depth])
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
        except OSError as exc:
            reason = f"writing {value!r} to {name} failed: {_oserror(exc)}"
            if exc.errno == errno.EBUSY and name == "cgroup.procs":
                reason += " (processes can only join a group without enabled sub-group controllers)"
            elif exc.errno == errno.EBUSY:
                reason += " (a group with processes of its own cannot delegate controllers)"
            raise CgroupFailed(cgroup=self.proc_paths[depth], reason=reason) from exc

    def delegate(self, controllers: set[str]) -> None:
        """Enable ``controllers`` in cgroup.subtree_control from the delegated root down to the
        group's parent, so the group has their limit files."""
        for depth in range(len(self.fds) - 1):
            available = set((self._read(depth, "cgroup.controllers") or "").split())
            missing = controllers - available
            if missing:
                raise CgroupFailed(
                    cgroup=self.proc_paths[depth],
                    reason=f"controller(s) {' '.join(sorted(missing))} not available there (cgroup.controllers: "
                    f"{' '.join(sorted(available)) or 'none'}); delegate them to the daemon's cgroup root "
                    "(docs/operating.md: cgroup delegation)",
                )
            todo = controllers - set((self._read(depth, "cgroup.subtree_control") or "").split())
            if todo:
                self._write(depth, "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(todo)))

    def set_limits(self, limits: dict[str, str]) -> None:
        for name, value in limits.items():
            self._write(len(self.fds) - 1, name, value)
        if limits:
            log.info("cgroup.limits", cgroup=self.proc_path, **{k.replace(".", "_"): v for k, v in limits.items()})

    def room(self, resource: str, planned: str | None = None) -> tuple[int, int, int, str] | None:
        """The tightest ``<resource>.max`` over the group (``planned`` in place of its own, when
        given) and all its ancestors, as (free, max, current, group); None when no level limits
        ``resource`` ("memory" or "pids")."""
        levels = [(self.proc_paths[d], self._read(d, f"{resource}.max"), self._read(d, f"{resource}.current"))
                  for d in range(len(self.fds))]
        if planned is not None:
            levels[-1] = (levels[-1][0], planned, levels[-1][2])
        above = Path(self.proc_paths[0]).parent
        while above != Path("/"):
            directory = self.mount / str(above).lstrip("/")
            levels.append((str(above), read_value(directory / f"{resource}.max"),
                           read_value(directory / f"{resource}.current")))
            above = above.parent
        tightest = None
        for group, limit, current in levels:
            if limit is None or limit == "max":
                continue
            used = int(current or 0)
            free = max(0, int(limit) - used)
            if tightest is None or free < tightest[0]:
                tightest = (free, int(limit), used, group)
        return tightest

    def adopt(self, pid: int) -> None:
        """Move process ``pid`` (all its threads) into the group."""
        self._write(len(self.fds) - 1, "cgroup.procs", str(pid))

    def remove_created(self) -> None:
        """Remove the groups this placement created, deepest first, once their processes are gone."""
        for path in reversed(self.created):
            deadline = time.monotonic() + _RMDIR_WAIT_SECONDS
            while True:
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                        log.warning("cgroup.remove_failed", path=str(path), error=_oserror(exc))
                        return
                    time.sleep(0.05)
        self.created = []

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    @contextlib.contextmanager
    def held(self) -> Iterator[Cgroup]:
        """The group for the block: its fds closed after it, the groups it created removed if it fails."""
        try:
            yield self
        except BaseException:
            self.remove_created()
            raise
        finally:
            self.close()


def read_value(path: Path) -> str | None:
    """A cgroup file's content, stripped; None where it cannot be read (no such controller)."""
    try:
        return path.read_text().strip()
    except OSError:
        return None


def check_fits(cgroup: Cgroup, needs: Needs, limits: dict[str, str]) -> None:
    """Refuse a snapshot that cannot fit: ``needs.memory`` under memory.max, ``needs.tasks``
    under pids.max, of the group (with the ``limits`` about to be set) or any ancestor, less
    what they already use."""
    memory, tasks = needs.memory, needs.tasks
    for controller, need, wanted, fitting in (
        ("memory", memory, f"{memory} bytes ({memory / 2**20:.1f} MiB, the size of its image) of memory",
         lambda free: f"{free} bytes ({free / 2**20:.1f} MiB) are free under"),
        ("pids", tasks, f"{tasks} tasks (its threads and CRIU)", lambda free: f"{free} fit under"),
    ):
        room = cgroup.room(controller, limits.get(f"{controller}.max"))
        if room and room[0] < need:
            free, limit, current, group = room
            raise CgroupTooSmall(
                snapshot_id=needs.snapshot_id, cgroup=cgroup.proc_path,
                reason=f"the snapshot needs {wanted} but {fitting(free)} {controller}.max {limit} "
                f"({controller}.current {current}) of {group}",
            )


class CgroupRoot:
    """The delegated subtree restored trees may be placed in; ``path`` None: no cgroup2 here."""

    def __init__(self, path: Path | None, mount: Path | None) -> None:
        self.path = path
        self.mount = mount

    @classmethod
    def configure(cls, configured: Path | None) -> CgroupRoot:
        """``configured``, else <cgroup2 mount>/gpu-snapd (created on first use). Refuses a root
        outside the cgroup2 mount, the mount itself, and one holding the daemon's own cgroup:
        restored trees must never share the daemon's cgroup."""
        mount = cgroup2_mount()
        if mount is None:
            if configured:
                raise ConfigInvalid(source="cgroup_root", reason=f"{configured}: no cgroup2 hierarchy is mounted")
            log.warning("cgroups.unavailable", reason="no cgroup2 hierarchy mounted; restores cannot pick a cgroup")
            return cls(None, None)
        root = Path(os.path.realpath(configured)) if configured else mount / DEFAULT_ROOT_NAME
        if root == mount or not root.is_relative_to(mount):
            raise ConfigInvalid(source="cgroup_root", reason=f"{root} is not a group below the cgroup2 mount {mount}")
        proc_path = "/" + str(root.relative_to(mount))
        own = cgroup_of("self")
        if own == proc_path or own.startswith(proc_path + "/"):
            raise ConfigInvalid(
                source="cgroup_root",
                reason=f"{root} holds the daemon's own cgroup {own}; restored trees must live outside it",
            )
        return cls(root, mount)

    def _create_root(self) -> None:
        """Make the delegated root (first use) and have its parent delegate the controllers
        snapd sets limits with, where the parent has them; a refusal there is only logged."""
        assert self.path is not None
        os.makedirs(self.path, mode=0o755, exist_ok=True)
        parent = self.path.parent
        wanted = set(LIMIT_CONTROLLERS.values())
        try:
            available = set((parent / "cgroup.controllers").read_text().split())
            enabled = set((parent / "cgroup.subtree_control").read_text().split())
            todo = (wanted & available) - enabled
            if todo:
                (parent / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in sorted(todo)))
        except OSError as exc:
            log.warning("cgroups.root_delegation_failed", parent=str(parent), error=_oserror(exc))
        log.info("cgroups.root_created", root=str(self.path))

    def proc_path(self, request: CgroupRequest) -> str:
        """Where a request's group sits, as /proc/<pid>/cgroup shows it ("" without cgroup2)."""
        if self.path is None or self.mount is None:
            return ""
        return "/" + str(self.path.relative_to(self.mount) / request.path)

    def _open(self, request: CgroupRequest) -> Cgroup:
        assert self.path is not None and self.mount is not None
        base = "/" + str(self.path.relative_to(self.mount))
        proc_paths = [base] + [f"{base}/{'/'.join(request.parts[: i + 1])}" for i in range(len(request.parts))]
        if not self.path.is_dir():
            if not request.create:
                raise CgroupFailed(cgroup=proc_paths[-1], reason=f"the delegated root {self.path} does not exist; "
                                   "pass --create-cgroup (CgroupSpec.create) to create it")
            self._create_root()
        fds = [os.open(self.path, _DIR_FLAGS)]
        created: list[Path] = []
        cgroup = Cgroup(self.mount, proc_paths, fds, created)
        try:
            device = os.fstat(fds[0]).st_dev
            for i, part in enumerate(request.parts):
                fds.append(self._step(fds[-1], part, request.create, proc_paths[i + 1], created, device))
        except BaseException:
            cgroup.remove_created()
            cgroup.close()
            raise
        return cgroup

    def _step(self, parent_fd: int, part: str, create: bool, proc_path: str, created: list[Path], device: int) -> int:
        """Open one component below ``parent_fd`` without following links, creating it on request."""
        assert self.mount is not None
        try:
            fd = os.open(part, _DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            if not create:
                raise CgroupFailed(cgroup=proc_path, reason="does not exist; pass --create-cgroup (CgroupSpec.create) to "
                                   "create it") from None
            try:
                os.mkdir(part, 0o755, dir_fd=parent_fd)
                created.append(self.mount / proc_path.lstrip("/"))
            except FileExistsError:
                pass
            except OSError as exc:
                raise CgroupFailed(cgroup=proc_path, reason=f"cannot create it: {_oserror(exc)}") from exc
            return self._step(parent_fd, part, False, proc_path, created, device)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise InvalidRequest(field="cgroup.path",
                                     reason=f"{proc_path} is not a group (a link or a file)") from exc
            raise CgroupFailed(cgroup=proc_path, reason=f"cannot open it: {_oserror(exc)}") from exc
        if os.fstat(fd).st_dev != device:
            os.close(fd)
            raise InvalidRequest(field="cgroup.path", reason=f"{proc_path} leaves the delegated root's mount")
        return fd

    @contextlib.contextmanager
    def placement(self, request: CgroupRequest | None, needs: Needs) -> Iterator[Cgroup | None]:
        """The group a restore goes into, opened (created on request), checked to fit with the
        requested limits (CgroupTooSmall before any limit is written or anything restored; only
        the controllers the limits need are enabled on the path first), then limited;
        None when no group was asked for. A failure inside the block removes the groups this
        placement created."""
        if request is None:
            yield None
            return
        if self.path is None:
            raise CgroupFailed(cgroup=request.path, reason="no cgroup2 hierarchy is mounted on this host")
        with self._open(request).held() as cgroup:
            cgroup.delegate({LIMIT_CONTROLLERS[name] for name in request.limits})
            check_fits(cgroup, needs, request.limits)
            cgroup.set_limits(request.limits)
            yield cgroup
