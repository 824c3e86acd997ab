"""Standard streams that connect a process tree to the outside, and where they go after a restore.

A server started by a scheduler, a shell or a service manager writes its
stdout/stderr into a pipe or a unix socket whose other end (the parent, or
journald) is outside the tree. CRIU dumps the tree's end of a pipe, but a
restore recreates it with nobody reading: the first log line then kills the
server with SIGPIPE. A unix socket to the outside CRIU refuses to dump at all.
Before the dump snapd records these outward ends on fds 0-2 (sockets are named
to CRIU as external); at restore it hands CRIU a file to use instead
(``inherit_fd``): the restore log for an end the tree writes into, /dev/null
for one it reads from. Other fds are left to CRIU.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import structlog

from snapd_daemon.errors import InvalidRequest, RestoreLogUnavailable
from snapd_daemon.host.procfds import fd_links

log = structlog.get_logger()
_ANON = re.compile(r"(pipe|socket):\[(\d+)\]")
_STDIO = ("0", "1", "2")
LOG_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")

# sock_diag (linux/sock_diag.h, linux/unix_diag.h): every unix socket with its peer's inode
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST_DUMP = 0x1 | 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_UDIAG_SHOW_PEER = 0x4
_UNIX_DIAG_PEER = 2
_NLMSG = struct.Struct("=IHHII")
_UNIX_DIAG_REQ = struct.Struct("=BBHIIIII")
_UNIX_DIAG_MSG = struct.Struct("=BBBBIII")
_NLATTR = struct.Struct("=HH")


@dataclass(frozen=True)
class OutwardEnd:
    """The tree's end of a pipe or unix socket whose other end no process of the
    tree holds, on a standard stream: ``writes`` for stdout/stderr, else stdin."""

    kind: str  # "pipe" or "socket"
    inode: int
    writes: bool

    @property
    def key(self) -> str:
        """How CRIU names it for inherit_fd: "pipe:[ino]" or "socket:[ino]"."""
        return f"{self.kind}:[{self.inode}]"

    @property
    def criu_external(self) -> str | None:
        """The dump option that lets CRIU dump it ("unix[ino]"); None for a pipe."""
        return f"unix[{self.inode}]" if self.kind == "socket" else None


def unix_peers() -> dict[int, int]:
    """Inode of every unix socket of this network namespace -> its peer's inode (0: none)."""
    request = _UNIX_DIAG_REQ.pack(socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0, _UDIAG_SHOW_PEER, 0xFFFFFFFF, 0xFFFFFFFF)
    header = _NLMSG.pack(_NLMSG.size + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST_DUMP, 1, 0)
    peers: dict[int, int] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
        nl.sendto(header + request, (0, 0))
        while True:
            data = nl.recv(1 << 16)
            offset = 0
            while offset + _NLMSG.size <= len(data):
                length, kind = _NLMSG.unpack_from(data, offset)[:2]
                if kind == _NLMSG_DONE:
                    return peers
                if kind == _NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, offset + _NLMSG.size)[0]
                    raise OSError(code, f"sock_diag: {os.strerror(code)}")
                inode = _UNIX_DIAG_MSG.unpack_from(data, offset + _NLMSG.size)[4]
                peers[inode] = 0
                attr = offset + _NLMSG.size + _UNIX_DIAG_MSG.size
                while attr + _NLATTR.size <= offset + length:
                    size, attr_type = _NLATTR.unpack_from(data, attr)
                    if size < _NLATTR.size:
                        break
                    if attr_type == _UNIX_DIAG_PEER:
                        peers[inode] = struct.unpack_from("=I", data, attr + _NLATTR.size)[0]
                    attr += (size + 3) & ~3
                offset += (length + 3) & ~3


def _anonymous_fds(pid: int) -> Iterator[tuple[str, str, int, int]]:
    """(fd, kind, inode, O_ACCMODE) for every pipe and socket fd of pid (none if it exited)."""
    for fd, target in fd_links(pid):
        match = _ANON.fullmatch(target)
        if match is None:
            continue
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                flags = next(int(line.split()[1], 8) for line in info if line.startswith("flags:"))
        except FileNotFoundError:  # closed meanwhile
            continue
        yield fd, match.group(1), int(match.group(2)), flags & os.O_ACCMODE


def outward_stdio(pids: list[int]) -> list[OutwardEnd]:
    """The outward ends on fds 0-2 of these processes: a pipe whose other end none
    of them holds, a unix socket whose peer none of them holds."""
    pipe_modes: dict[int, set[int]] = {}
    sockets: set[int] = set()
    stdio: dict[tuple[str, int], bool] = {}  # (kind, inode) -> writes
    for pid in pids:
        for fd, kind, inode, mode in _anonymous_fds(pid):
            if kind == "pipe":
                pipe_modes.setdefault(inode, set()).add(mode)
            else:
                sockets.add(inode)
            if fd in _STDIO:
                stdio[kind, inode] = stdio.get((kind, inode), False) or fd != "0"
    peers: dict[int, int] = {}
    if any(kind == "socket" for kind, _ in stdio):
        try:
            peers = unix_peers()
        except OSError as err:  # no unix_diag in this kernel: CRIU cannot dump unix sockets either
            log.warning("stdio.sock_diag_failed", error=str(err))
    outward = []
    for (kind, inode), writes in sorted(stdio.items()):
        if kind == "pipe":
            alone = pipe_modes[inode] in ({os.O_WRONLY}, {os.O_RDONLY})
        else:
            alone = peers.get(inode, 0) not in (0, *sockets)
        if alone:
            outward.append(OutwardEnd(kind, inode, writes))
    return outward


def validate_log_name(name: str) -> str:
    """``name`` if it is a valid restore log name, or "" (the default); else InvalidRequest."""
    if name and not LOG_NAME_RE.fullmatch(name):
        raise InvalidRequest(field="log_name", reason=f"{name[:40]!r} must be 1-128 characters of A-Z a-z 0-9 . _ - "
                                                      "starting with a letter, digit or _ (a file in the log directory)")
    return name


@contextmanager
def inherited_fds(ends: list[OutwardEnd], log_dir: Path, name: str) -> Iterator[tuple[list[tuple[str, int]], Path]]:
    """Open what each outward end becomes; yields ([(CRIU key, fd)], log path) and closes them after.

    The log is opened below ``log_dir`` without following links, created 0640
    and appended to; a FIFO there needs a reader. Each key gets an fd of its
    own (CRIU moves every inherited fd into its store and closes it).
    Raises RestoreLogUnavailable."""
    path = log_dir / name
    fds: list[int] = []
    try:
        sources: dict[bool, int] = {}
        if any(e.writes for e in ends):
            sources[True] = _open_log(log_dir, name)
            fds.append(sources[True])
        if any(not e.writes for e in ends):
            sources[False] = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            fds.append(sources[False])
        inherit = []
        for end in ends:
            fds.append(os.dup(sources[end.writes]))
            inherit.append((end.key, fds[-1]))
        yield inherit, path
    finally:
        for fd in fds:
            os.close(fd)


def _open_log(log_dir: Path, name: str) -> int:
    path = log_dir / name
    try:
        log_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        dir_fd = os.open(log_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise RestoreLogUnavailable(path=path, reason=exc.strerror or str(exc)) from exc
    try:
        fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                     | os.O_CLOEXEC, 0o640, dir_fd=dir_fd)
    except OSError as exc:
        reason = {errno.ELOOP: "it is a symbolic link", errno.ENXIO: "it is a FIFO with no reader"}.get(
            exc.errno, exc.strerror or str(exc))
        raise RestoreLogUnavailable(path=path, reason=reason) from exc
    finally:
        os.close(dir_fd)
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
        os.close(fd)
        raise RestoreLogUnavailable(path=path, reason="it is neither a regular file nor a FIFO")
    os.set_blocking(fd, True)
    return fd
