"""The pids a snapshot restores with: free them or refuse; kill a restored tree that must not live."""

from __future__ import annotations

import structlog

from snapd_daemon.errors import PidsInUse, PidsStillExiting
from snapd_daemon.host.processes import PidState, comm, parent_of, pid_state, wait_for_state
from snapd_daemon.runtime.holds import HoldRecord, kill_restored
from snapd_daemon.snapshots.manifest import Manifest

log = structlog.get_logger()
_KILL_WAIT_SECONDS = 30.0


def ensure_pids_free(manifest: Manifest, wait_seconds: float) -> None:
    """Refuse at once if a snapshot pid is held by a live process; wait for exiting ones."""
    exiting = []
    for rec in manifest.processes:
        state = pid_state(rec.pid)
        if state is PidState.ALIVE:
            raise PidsInUse(snapshot_id=manifest.id, pid=rec.pid, name=comm(rec.pid))
        if state is PidState.EXITING:
            exiting.append(rec.pid)
    if not exiting:
        return
    log.info("restore.waiting_for_exit", pids=exiting)
    left = wait_for_state(exiting, {PidState.FREE}, wait_seconds)
    if left:
        raise PidsStillExiting(snapshot_id=manifest.id, pid=left[0], seconds=wait_seconds, ppid=parent_of(left[0]))


def kill_tree(record: HoldRecord) -> list[int]:
    """SIGKILL what this restore created, as its record names it (by start time, or by
    name and a start after the restore began: never a process that took a pid since);
    returns the pids still alive after the wait (none, normally)."""
    killed = kill_restored(record)
    return wait_for_state(killed, {PidState.FREE, PidState.EXITING}, _KILL_WAIT_SECONDS)
