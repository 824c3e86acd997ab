"""The pids a snapshot restores with: free them or refuse; kill a restored tree that must not live."""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from snapd_daemon.errors import PidsInUse, PidsStillExiting
from snapd_daemon.host.processes import PidState, comm, parent_of, pid_state, wait_for_state
from snapd_daemon.runtime.holds import HoldRecord, kill_restored
from snapd_daemon.snapshots.manifest import Manifest

log = structlog.get_logger()
_KILL_WAIT_SECONDS = 30.0
# how long a killed tree's pids may stay held (tearing down, or zombies) before the restore
# answers naming them
_FREE_WAIT_SECONDS = 10.0


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


@dataclass(frozen=True)
class KillOutcome:
    alive: list[int]  # pids that survived SIGKILL (none, normally)
    exiting: list[int]  # pids still held, after the wait, by a process tearing down or an unreaped zombie


def kill_tree(record: HoldRecord) -> KillOutcome:
    """SIGKILL what this restore created, as its record names it (by start time, or by
    name and a start after the restore began: never a process that took a pid since), and
    wait until its pids are free: a killed process may take a while to tear down a large
    address space, and a zombie holds its pid until its parent reaps it (the daemon, child
    subreaper of what it restores, reaps the tree's processes as they end: host/reaper.py;
    reaping them here would take an instance root's exit status from the instance table).
    Pids not free after the waits are returned."""
    killed = kill_restored(record)
    alive = wait_for_state(killed, {PidState.FREE, PidState.EXITING}, _KILL_WAIT_SECONDS)
    dying = [p for p in killed if p not in alive]
    exiting = wait_for_state(dying, {PidState.FREE}, _FREE_WAIT_SECONDS)
    if exiting:
        log.warning("restore.pids_not_free", pids=exiting, parents=parents(exiting))
    return KillOutcome(alive, exiting)


def parents(pids: list[int]) -> list[str]:
    """The parent of each pid ("?" for one gone meanwhile)."""
    return [parent_of(p) for p in pids]
