"""Room in host memory for a CUDA checkpoint's copy of GPU memory.

The driver's checkpoint copies every byte of a process's GPU memory into that
process's own host memory, charged to its cgroup. Where the copy does not fit,
the OOM killer ends the process in the middle of the driver's work, so a
checkpoint is refused before anything is frozen instead (``HostMemoryShort``).
Room is what MemAvailable says less ``RESERVE``, or less where a cgroup v2
group above the process has a tighter memory.max.
"""

from __future__ import annotations

from snapd_daemon.errors import HostMemoryShort
from snapd_daemon.host.cgroups import group_of, read_value
from snapd_daemon.util.meminfo import mem_available

# host memory a CUDA checkpoint leaves to everything else on the host
RESERVE = 1 << 30


def cgroup_room(pid: int) -> tuple[int, str] | None:
    """Bytes ``pid`` may still charge to its cgroup v2 groups before one of them reaches its
    memory.max, and that group ("cgroup /a/b (memory.max N)"); None where no group above it
    has a memory limit (or there is no cgroup2 memory controller). A group's reclaimable
    page cache counts as room: used = memory.current - file + shmem (memory.stat)."""
    found = group_of(pid)
    if found is None:
        return None
    mount, path = found
    tightest: tuple[int, str] | None = None
    parts = [p for p in path.split("/") if p]
    for depth in range(len(parts), 0, -1):
        group = mount.joinpath(*parts[:depth])
        limit, current = read_value(group / "memory.max"), read_value(group / "memory.current")
        if limit is None or current is None or limit == "max":
            continue
        stat = dict(line.split() for line in (read_value(group / "memory.stat") or "").splitlines() if " " in line)
        used = int(current) - int(stat.get("file", 0)) + int(stat.get("shmem", 0))
        room = max(0, int(limit) - used)
        if tightest is None or room < tightest[0]:
            tightest = (room, f"cgroup /{'/'.join(parts[:depth])} (memory.max {limit})")
    return tightest


def require_room_for_vram(pids: tuple[int, ...], vram: int) -> None:
    """Refuse (HostMemoryShort) a CUDA checkpoint whose host copy of ``vram`` bytes of
    GPU memory would not fit where ``pids`` are charged; where it runs out, the OOM killer
    ends a process in the middle of its checkpoint (module docstring). The
    whole copy is weighed against the tightest group of any of the pids:
    conservative when they sit in separate groups."""
    if not vram:
        return
    room, where = mem_available() - RESERVE, "the host (MemAvailable less 1 GiB)"
    for pid in pids:
        limited = cgroup_room(pid)
        if limited is not None and limited[0] < room:
            room, where = limited
    if vram > room:
        raise HostMemoryShort(pids=list(pids), vram=vram, where=where, room=max(0, room))
