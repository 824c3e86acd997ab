"""/proc/PID/maps, parsed once for every reader: the follower's live regions, the NCCL
check's mapped paths, the file pages a restore reads ahead."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class MapsEntry:
    """One mapping: [start, end), its permissions ("rwxp"), file offset, the file's device and
    inode (0 for anonymous memory) and its path ("" for none; "[heap]" and the like kept)."""

    start: int
    end: int
    perms: str
    offset: int
    device: int
    inode: int
    path: str

    @property
    def private(self) -> bool:
        return self.perms[3:4] == "p"

    @property
    def executable(self) -> bool:
        return self.perms[2:3] == "x"


def read(pid: int) -> list[MapsEntry]:
    """The mappings of ``pid`` in address order. Raises OSError (a process that is gone)."""
    entries = []
    with open(f"/proc/{pid}/maps", "rb") as f:
        for line in f:
            fields = line.rstrip(b"\n").split(maxsplit=5)
            start, end = (int(x, 16) for x in fields[0].split(b"-"))
            major, minor = (int(x, 16) for x in fields[3].split(b":"))
            entries.append(MapsEntry(start, end, fields[1].decode(), int(fields[2], 16), os.makedev(major, minor),
                                     int(fields[4]), os.fsdecode(fields[5]) if len(fields) == 6 else ""))
    return entries
