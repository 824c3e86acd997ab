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
is mapped by every CUDA build of PyTorch) is not evidence.
"""

from __future__ import annotations

import os

from snapd_daemon.errors import NcclActive
from snapd_daemon.host.processes import ProcessTree, comm

_THREAD_PREFIXES = ("NCCL", "pt_nccl")
_SHM = "/dev/shm/nccl-"
_SOCKET = "@nccl-socket"


def evidence(pid: int) -> str:
    """What shows live NCCL state in ``pid`` ("" when nothing does, or it is gone)."""
    try:
        for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
            name = _read(f"/proc/{pid}/task/{tid}/comm").strip()
            if name.startswith(_THREAD_PREFIXES):
                return f"thread {tid} named {name!r}"
        for line in _read(f"/proc/{pid}/maps").splitlines():
            path = line.split(maxsplit=5)[5] if len(line.split(maxsplit=5)) == 6 else ""
            if path.startswith(_SHM):
                return f"a mapping of {path}"
        return _nccl_socket(pid)
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _nccl_socket(pid: int) -> str:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    for row in _read(f"/proc/{pid}/net/unix").splitlines()[1:]:
        fields = row.split()
        if len(fields) >= 8 and fields[6] in inodes and fields[7].startswith(_SOCKET):
            return f"the unix socket {fields[7]}"
    return ""


def _read(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def refuse_live(tree: ProcessTree) -> None:
    """Raise NcclActive for the first process of ``tree`` holding live NCCL state."""
    for pid in tree.pids:
        found = evidence(pid)
        if found:
            raise NcclActive(pid=pid, name=comm(pid), evidence=found)
