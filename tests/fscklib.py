"""The fsck-under-gc campaign (issue #23, item 5), shared by tests/test_fsck_load.py and
scripts/faults.py: `fsck` run again and again while checkpoints add snapshots and
`gc --keep-last 1` and `rm` delete them, against a real daemon and real processes.

One snapshot, pinned, has a chunk corrupted on disk before the load starts: every
fsck must report it (damage under load is still found), and nothing else (a chunk of
a snapshot deleted while fsck ran is no damage).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from faultlib import biggest_chunk, damage_chunk
from harness import Daemon, Workloads
from snapd_client import SnapdClient, SnapdClientError

# the load's snapshot names: rm deletes snapshots of the first, gc --keep-last 1 expires all but
# the newest of each
_LOAD_NAMES = ("load-a", "load-b")
# errors a delete racing with gc (or a checkpoint of its snapshot) may meet: not failures
_RACING = {"SnapshotNotFound", "SnapshotBusy"}


@dataclass
class FsckCampaign:
    fsck_runs: int = 0
    false_reports: int = 0  # runs that reported damage other than the corrupted chunk
    corruption_detected: int = 0  # runs that reported the corrupted chunk of the pinned snapshot
    snapshots_gone: int = 0  # snapshots deleted while an fsck that was to check them ran
    checkpoints: int = 0
    expired_by_gc: int = 0
    removed_by_rm: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)  # unexpected errors of the load or of fsck
    false: list[str] = field(default_factory=list)  # the first false reports, for the message
    missing_logged: int = 0  # "store.chunk_missing" lines in the daemon's log

    def describe(self) -> str:
        return (f"{self.fsck_runs} fsck runs in {self.seconds:.1f} s: {self.false_reports} false report(s), "
                f"corruption detected in {self.corruption_detected}; {self.snapshots_gone} snapshot(s) deleted "
                f"under a running fsck; load: {self.checkpoints} checkpoints, {self.expired_by_gc} expired by gc, "
                f"{self.removed_by_rm} removed by rm; {self.missing_logged} chunk_missing log line(s); "
                f"{len(self.errors)} unexpected error(s)")


def run_campaign(daemon: Daemon, workloads: Workloads, min_runs: int = 200, time_limit: float = 150.0) -> FsckCampaign:
    """Run the campaign until ``min_runs`` fsck calls have returned (and the load has deleted
    snapshots meanwhile) or ``time_limit`` seconds have passed."""
    result = FsckCampaign()
    with daemon.client() as c:
        pid, _ = workloads.start("memhold.py", "4")
        kept = c.checkpoint(pid, name="kept", leave_running=True)
        c.pin(kept.id)
        bad_chunk = damage_chunk(biggest_chunk(daemon.state_dir), "flip")
    loaders = [workloads.start("memhold.py", "1")[0] for _ in _LOAD_NAMES]
    stop = threading.Event()
    lock = threading.Lock()

    def unexpected(what: str, err: Exception) -> None:
        with lock:
            result.errors.append(f"{what}: {err}")

    def checkpoints(c: SnapdClient) -> None:
        for name, load_pid in zip(_LOAD_NAMES, loaders, strict=True):
            c.checkpoint(load_pid, name=name, leave_running=True)
            result.checkpoints += 1
        stop.wait(0.1)  # CPU left to fsck on a small machine

    def gc(c: SnapdClient) -> None:
        result.expired_by_gc += len(c.gc(keep_last=1).expired_snapshots)
        stop.wait(0.05)

    def rm(c: SnapdClient) -> None:
        for sid in [s.id for s in c.list().snapshots if s.name == _LOAD_NAMES[0]][:1]:  # the oldest
            c.delete(sid)
            result.removed_by_rm += 1
        stop.wait(0.03)

    def loop(step: Callable[[SnapdClient], None]) -> None:
        """``step`` again and again until the campaign ends; a deletion losing a race with
        another is expected, any other error recorded."""
        with daemon.client() as c:
            while not stop.is_set():
                try:
                    step(c)
                except SnapdClientError as err:
                    if err.error_class not in _RACING:
                        unexpected(step.__name__, err)

    threads = [threading.Thread(target=loop, args=(step,), daemon=True) for step in (checkpoints, gc, rm)]
    started = time.monotonic()
    for t in threads:
        t.start()
    try:
        with daemon.client() as c:
            while time.monotonic() - started < time_limit and (
                    result.fsck_runs < min_runs or result.expired_by_gc + result.removed_by_rm == 0):
                try:
                    report = c.fsck()
                except SnapdClientError as err:
                    unexpected("fsck", err)
                    continue
                result.fsck_runs += 1
                result.snapshots_gone += len(report.snapshots_gone)
                wrong = [d for d in report.damage if (d.snapshot_id, d.chunk) != (kept.id, bad_chunk)]
                if wrong:
                    result.false_reports += 1
                    result.false += [f"{d.snapshot_id} {d.chunk}: {d.problem}" for d in wrong[:3]]
                if any((d.snapshot_id, d.chunk) == (kept.id, bad_chunk) for d in report.damage):
                    result.corruption_detected += 1
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    result.seconds = time.monotonic() - started
    result.missing_logged = _log_lines(daemon.log, "store.chunk_missing")
    return result


def _log_lines(log: Path, event: str) -> int:
    return sum(1 for line in log.read_text(errors="replace").splitlines() if f'"{event}"' in line)
