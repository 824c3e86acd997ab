"""Pid and network namespaces: entering and creating them, and reading pids across them.

A tree started as the init (pid 1) of a pid namespace of its own (``snapd run``)
is dumped by CRIU with that namespace, and every restore gets a fresh one: the
tree's pids are the same inside each copy, so one snapshot restores many times
at once. Everything outside the tree (the daemon, its hold journal, signals,
process_vm_writev, the CUDA driver) names the tree's processes by their host
pids: ``host_pids`` maps the pids inside a restored copy to those, from the
``NSpid`` lines of /proc/PID/status. A pid number is always a host pid unless
it is named ``ns_pid``.

The calls (``unshare``, ``setns``) go through libc: Python 3.11 has no
``os.unshare`` / ``os.setns``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import socket
import struct

import psutil

CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_TCP_LISTEN = "0A"
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _call(name: str, *args: int) -> None:
    if getattr(_libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    """unshare(2): CLONE_NEWPID puts the caller's next children in a new pid namespace
    (the first one is its init); CLONE_NEWNET moves the caller into a new network namespace."""
    _call("unshare", flags)


def setns(fd: int, nstype: int) -> None:
    """setns(2) on the calling thread (a single-threaded process: the whole process)."""
    _call("setns", fd, nstype)


def ns_pids(pid: int) -> list[int]:
    """pid's pid in each pid namespace it is in, outermost (the one /proc shows) first."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("NSpid:"):
                return [int(x) for x in line.split()[1:]]
    raise ProcessLookupError(pid)


def same_namespace(kind: str, pid: int, other: int) -> bool:
    """Whether ``pid`` and ``other`` share their ``kind`` ("pid", "net") namespace."""
    return os.readlink(f"/proc/{pid}/ns/{kind}") == os.readlink(f"/proc/{other}/ns/{kind}")


def namespace_init(pid: int) -> int:
    """The host pid of the init of the pid namespace ``pid`` lives in (``pid``'s pid
    namespace nested directly below the caller's), or 0 if none is found."""
    level = len(ns_pids(pid)) - 1
    for proc in psutil.process_iter():
        try:
            chain = ns_pids(proc.pid)
        except (OSError, ProcessLookupError):
            continue
        if len(chain) == level + 1 and chain[-1] == 1 and same_namespace("pid", proc.pid, pid):
            return proc.pid
    return 0


def pids_inside(root: int, members: list[int]) -> dict[int, int]:
    """host pid -> pid inside the pid namespace whose init is ``root``, for ``members``."""
    level = len(ns_pids(root)) - 1
    return {pid: ns_pids(pid)[level] for pid in members}


def host_pids(root: int) -> dict[int, int]:
    """pid inside ``root``'s pid namespace -> host pid, for ``root`` and every descendant."""
    level = len(ns_pids(root)) - 1
    found = {}
    for proc in [psutil.Process(root), *psutil.Process(root).children(recursive=True)]:
        try:
            found[ns_pids(proc.pid)[level]] = proc.pid
        except (OSError, ProcessLookupError, IndexError):
            continue
    return found


def loopback_up() -> None:
    """Bring ``lo`` up in the caller's network namespace (a new one starts with it down)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | _IFF_UP))


def listening_ports(pid: int) -> list[int]:
    """TCP ports listened on in ``pid``'s network namespace (IPv4 and IPv6), sorted."""
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                rows = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 3 and fields[3] == _TCP_LISTEN:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return sorted(ports)
