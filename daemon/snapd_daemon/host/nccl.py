"""Live NCCL state in a process tree, which the CUDA driver's checkpoint cannot take.

NCCL communicators hold GPU memory shared with other processes (CUDA IPC /
cuMem handles), proxy threads and sockets between ranks; the driver's
checkpoint API does not support them (NVIDIA lists NCCL as unsupported), and
a checkpoint of such a process fails inside the driver or restores a server
whose collectives hang. A tensor-parallel server is checkpointable once its
communicators are torn down (a pre-checkpoint hook) and rebuilt after the
restore (a post-restore hook). What betrays a live communicator, per process:

- a thread NCCL or PyTorch named after it ("NCCL ..." when NCCL_SET_THREAD_NAME
  is on; PyTorch's "pt_nccl_..." watchdog and heartbeat threads of a
  ProcessGroupNCCL);
- a mapping of one of NCCL's shared-memory segments (/dev/shm/nccl-*: the SHM
  transport and the proxy's buffers);
- an open abstract unix socket of NCCL's (@nccl-socket-*: cuMem handle exchange
  between ranks' proxies).
None of them outlives ``ncclCommDestroy`` / ``ncclCommAbort`` (torch:
``dist.destroy_process_group()``). The library merely being loaded (libnccl.so
is mapped by every CUDA build of PyTorch) is not evidence, but one thing
does outlive the communicators: NCCL's RAS thread (NCCL 2.24 and later, on
unless NCCL_RAS_ENABLE=0), started once per process at the first
communicator, keeps TCP connections to the other ranks' RAS threads for the
life of the process. CRIU cannot dump established TCP connections unless
asked to (--tcp-established), so a process that maps libnccl and holds one is
refused up front, naming the variable, instead of failing inside the dump.
"""

from __future__ import annotations

import os
import socket

from snapd_daemon.errors import NcclActive
from snapd_daemon.host import procmaps
from snapd_daemon.host.processes import ProcessTree, comm

_THREAD_PREFIXES = ("NCCL", "pt_nccl")
_SHM = "/dev/shm/nccl-"
_SOCKET = "@nccl-socket"
_LIBRARY = "libnccl"
_RAS_THREAD = "NCCL RAS"
_RAS_FIX = ("NCCL's RAS thread keeps TCP connections to the other ranks after the communicators are gone: "
            "start the ranks with NCCL_RAS_ENABLE=0")
_TCP_ESTABLISHED = "01"


def evidence(pid: int, tcp_established: bool = False) -> str:
    """What shows live NCCL state in ``pid`` ("" when nothing does, or it is gone).
    ``tcp_established``: established TCP connections are dumped (not evidence then)."""
    try:
        for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
            name = _read(f"/proc/{pid}/task/{tid}/comm").strip()
            if name == _RAS_THREAD:
                return f"thread {tid} named {name!r}, {_RAS_FIX}"
            if name.startswith(_THREAD_PREFIXES):
                return f"thread {tid} named {name!r}"
        paths = [e.path for e in procmaps.read(pid) if e.path]
        for path in paths:
            if path.startswith(_SHM):
                return f"a mapping of {path}"
        inodes = _socket_inodes(pid)
        found = _nccl_socket(pid, inodes)
        if not found and not tcp_established and any(_LIBRARY in os.path.basename(p) for p in paths):
            found = _ras_connection(pid, inodes)
        return found
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _nccl_socket(pid: int, inodes: set[str]) -> str:
    for row in _read(f"/proc/{pid}/net/unix").splitlines()[1:]:
        fields = row.split()
        if len(fields) >= 8 and fields[6] in inodes and fields[7].startswith(_SOCKET):
            return f"the unix socket {fields[7]}"
    return ""


def _ras_connection(pid: int, inodes: set[str]) -> str:
    for table in ("tcp", "tcp6"):
        try:
            rows = _read(f"/proc/{pid}/net/{table}").splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[3] == _TCP_ESTABLISHED and fields[9] in inodes:
                return (f"an established TCP connection, {_endpoint(fields[1])} -> {_endpoint(fields[2])}, in a "
                        f"process with libnccl loaded; if it is NCCL's: {_RAS_FIX}; any other: close it before "
                        "the checkpoint, or dump it with --tcp-established")
    return ""


def _endpoint(hex_address: str) -> str:
    """``0100007F:1F90`` (a /proc/net/tcp address) as ``127.0.0.1:8080``; IPv6 as ``[...]:port``."""
    address, port = hex_address.split(":")
    raw = bytes.fromhex(address)
    # the kernel prints each 32-bit word in host (little-endian) order
    ordered = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return (f"{socket.inet_ntop(socket.AF_INET, ordered)}:{int(port, 16)}" if len(raw) == 4
            else f"[{socket.inet_ntop(socket.AF_INET6, ordered)}]:{int(port, 16)}")


def _read(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def refuse_live(tree: ProcessTree, tcp_established: bool = False) -> None:
    """Raise NcclActive for the first process of ``tree`` holding live NCCL state."""
    for pid in tree.pids:
        found = evidence(pid, tcp_established)
        if found:
            raise NcclActive(pid=pid, name=comm(pid), evidence=found)
