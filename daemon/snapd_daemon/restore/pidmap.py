"""Where a restored snapshot's processes are: checkpoint pid -> host pid of this copy.

A snapshot of a tree that shared the host's pid namespace comes back with its
own pids (the map is the identity). One whose root was the init of a pid
namespace of its own comes back in a fresh namespace: the pids inside are the
recorded ones, the host pids are new, and everything snapd does to the copy
(its hold record, signals, memory writes, CUDA calls) uses the host pids.
CRIU's images name processes by their pid inside; ``retarget`` moves the memory
writes planned for those onto the host pids.
"""

from __future__ import annotations

import dataclasses

from snapd_daemon.errors import RestoreAborted
from snapd_daemon.host.namespaces import host_pids
from snapd_daemon.restore.delivery import Route
from snapd_daemon.snapshots.manifest import Manifest


def locate(manifest: Manifest, root: int) -> dict[int, int]:
    """Checkpoint pid -> host pid of the copy CRIU restored with root ``root`` (a host pid)."""
    if not manifest.replicable:
        return {pid: pid for pid in manifest.pids}
    try:
        inside = host_pids(root)
    except (OSError, ProcessLookupError) as exc:
        raise RestoreAborted(snapshot_id=manifest.id, reason=f"root pid {root} died right after CRIU restored it "
                             "(killed from outside, or by the OOM killer?)") from exc
    missing = [p for p in manifest.pids if manifest.ns_pids[p] not in inside]
    if missing:
        raise RestoreAborted(snapshot_id=manifest.id,
                             reason=f"pid {manifest.ns_pids[missing[0]]} inside the namespace of root pid {root} "
                                    "died right after CRIU restored it (killed from outside, or by the OOM killer?)")
    return {pid: inside[manifest.ns_pids[pid]] for pid in manifest.pids}


def retarget(routes: list[Route], manifest: Manifest, hosts: dict[int, int]) -> list[Route]:
    """``routes`` whose memory targets name image pids, with host pids instead."""
    if not manifest.replicable:
        return routes
    by_image = {manifest.image_pid(pid): host for pid, host in hosts.items()}
    return [dataclasses.replace(r, targets=[t._replace(pid=by_image[t.pid]) if t.pid else t
                                            for t in r.targets]) for r in routes]
