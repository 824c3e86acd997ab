"""Room in host memory for a CUDA checkpoint's copy of GPU memory.

The driver's checkpoint copies every byte of a process's GPU memory into that
process's own host memory, charged to its cgroup. Where the copy does not fit,
the OOM killer ends the process in the middle of the driver's work, so a
checkpoint is refused before anything is frozen instead (``HostMemoryShort``).
Room is what MemAvailable says less ``RESERVE``, or less where a cgroup v2
group above the process has a tighter memory.max or memory.high.
"""

from __future__ import annotations

import structlog

from snapd_daemon.errors import HostMemoryShort
from snapd_daemon.host.cgroups import group_of, read_value
from snapd_daemon.util.meminfo import mem_available

# host memory a CUDA checkpoint leaves to everything else on the host
RESERVE = 1 << 30
# and below a cgroup's limit: page tables, the driver's bookkeeping and CRIU's
# parasite are charged to the same group
GROUP_RESERVE = 256 << 20
_LIMITS = ("memory.max", "memory.high")  # memory.high throttles a process the driver has locked

log = structlog.get_logger()


def cgroup_room(pid: int) -> tuple[int, str] | None:
    """Bytes ``pid`` may still charge to its cgroup v2 groups, and the group that limits it
    ("cgroup /a/b (memory.max N)"): the least, over the groups from its own up to the
    mount's root (in a cgroup namespace, that root is the container's own group), of
    memory.max or memory.high less what the group uses less ``GROUP_RESERVE``. Used is
    memory.current - file + shmem (memory.stat): reclaimable page cache counts as room.
    None where no group has a limit, there is no cgroup2 memory controller (cgroup v1
    limits are not read), or the group lies outside the daemon's cgroup namespace
    (logged)."""
    found = group_of(pid)
    if found is None:
        return None
    mount, path = found
    parts = [p for p in path.split("/") if p]
    if ".." in parts:
        log.warning("hostmemory.cgroup_unresolved", pid=pid, cgroup=path)
        return None
    tightest: tuple[int, str] | None = None
    for depth in range(len(parts), -1, -1):
        group = mount.joinpath(*parts[:depth])
        current = read_value(group / "memory.current")
        limits = [(int(value), name) for name in _LIMITS if (value := read_value(group / name)) not in (None, "max")]
        if current is None or not limits:
            continue
        limit, name = min(limits)
        stat = dict(line.split() for line in (read_value(group / "memory.stat") or "").splitlines() if " " in line)
        used = max(0, int(current) - int(stat.get("file", 0)) + int(stat.get("shmem", 0)))
        room = max(0, limit - used - GROUP_RESERVE)
        if tightest is None or room < tightest[0]:
            tightest = (room, f"cgroup /{'/'.join(parts[:depth])} ({name} {limit})")
    return tightest


def require_room_for_vram(pids: tuple[int, ...], vram: int) -> None:
    """Refuse (HostMemoryShort) a CUDA checkpoint whose host copy of ``vram`` bytes of
    GPU memory would not fit where ``pids`` are charged; where it runs out, the OOM killer
    ends a process in the middle of its checkpoint (module docstring). The
    whole copy is weighed against the tightest group of any of the pids:
    conservative when they sit in separate groups. A kernel that gives no
    MemAvailable leaves only the groups to check."""
    if not vram:
        return
    available = mem_available()
    tightest = (available - RESERVE, "the host (MemAvailable less 1 GiB)") if available else None
    for pid in pids:
        limited = cgroup_room(pid)
        if limited is not None and (tightest is None or limited[0] < tightest[0]):
            tightest = limited
    if tightest is not None and vram > tightest[0]:
        raise HostMemoryShort(pids=list(pids), vram=vram, where=tightest[1], room=max(0, tightest[0]))
