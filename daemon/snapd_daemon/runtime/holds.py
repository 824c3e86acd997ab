"""What an operation holds on the host, on disk, so that a restarted daemon can undo it.

Two kinds of record, one file each (``holds/<operation>.json``, replaced whole by
a rename, not fsynced: they describe live processes, which a reboot ends):

- THAW (checkpoint): written before the first CUDA lock, updated when the tree
  is SIGSTOPped after the dump. A restarted daemon thaws the tree: SIGCONT to
  the processes (but those stopped before the checkpoint), CUDA restore +
  unlock of any still locked or checkpointed (a process whose CUDA state is
  running is left alone). Once the snapshot is published, a checkpoint that
  stops its source turns its record into a KILL record by start time: the
  source must not come back next to its snapshot. It also names the links the
  checkpoint gave CRIU's link_remap links (host/linkremap.py) until the snapshot
  that keeps them is published: a restarted daemon removes those, whatever boot
  the record is of (they are files, not processes).
- KILL (restore): written before CRIU starts, naming the snapshot's pids and
  their names, the time the restore began, and CRIU's own pid once it runs;
  rewritten with exact start times once CRIU has created the tree. A
  restarted daemon ends CRIU if it still runs, with every task it had forked,
  then SIGKILLs every process the record names: by exact start time when known, else by pid, name and a
  start at or after the restore began — never a pid that another process
  held before the restore.

A record is written whole or not at all: a failed write (a full disk: the
operation fails with StoreFull before it has touched a process) removes its
temporary, and the start sweeps any a kill left. A record is removed when the
operation has thawed, killed or handed over its processes. At start, before serving, the daemon acts on every record a crash
left (``recover``); a record whose CUDA thaw failed is kept so that the next
start tries again; an unreadable record is logged and kept for an operator. A
record of an earlier boot (another boot id, or empty: its bytes lost with the
power) is removed without acting on it: its processes are gone and its pids
may be anyone's.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import structlog

from snapd_daemon.host import cuda, linkremap
from snapd_daemon.host.processes import START_SLACK, start_time
from snapd_daemon.host.treekill import kill_forking
from snapd_daemon.util.fsutil import remove_temporaries, write_atomic

log = structlog.get_logger()
THAW = "thaw"
KILL = "kill"
# Slack when comparing start times read from /proc with times taken by the daemon.
_CLOCK_SLACK = 1.0
_HELPER_EXIT_SECONDS = 30.0


@dataclass
class HoldRecord:
    # (pid, start time) of each process; start time 0: not created yet when the record was written
    processes: list[tuple[int, float]] = field(default_factory=list)
    cuda_pids: list[int] = field(default_factory=list)
    action: str = THAW
    # KILL: the processes' names, when the restore began, and CRIU's (pid, start time) while it runs
    names: dict[int, str] = field(default_factory=dict)
    since: float = 0.0
    helper: tuple[int, float] = (0, 0.0)
    # THAW: pids that were stopped before the operation touched them (left stopped)
    stopped: list[int] = field(default_factory=list)
    # THAW: links kept for link_remap by a checkpoint whose snapshot is not published yet
    links: list[str] = field(default_factory=list)
    # the kernel's boot id when written: after a reboot the processes it names are gone
    boot: str = field(default_factory=lambda: boot_id())


class HoldJournal:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def write(self, operation_id: str, record: HoldRecord) -> None:
        # atomic, not fsynced: a record names live processes, which a reboot ends with the
        # record's meaning; what matters is a daemon killed at any point (the rename is
        # visible at once). Records are written while a tree is frozen, and a checkpoint
        # keeps the disk busy with chunks: an fsync there could take seconds.
        write_atomic(self.directory / f"{operation_id}.json", json.dumps(asdict(record)).encode(), durable=False)

    def clear(self, operation_id: str) -> None:
        (self.directory / f"{operation_id}.json").unlink(missing_ok=True)

    def recover(self) -> int:
        """Undo what operations of a killed or crashed daemon left; must run before
        serving. Returns how many operations were recovered."""
        recovered = 0
        booted = boot_id()
        swept = remove_temporaries(self.directory)  # of writes a kill or a full disk cut short
        if swept:
            log.warning("recover.temporaries_removed", directory=str(self.directory), count=swept)
        for path in sorted(self.directory.glob("*.json")):
            try:
                text = path.read_text()
                record = _parse(json.loads(text)) if text else None
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("recover.unreadable_record", path=str(path), error=str(exc))
                continue
            if record is not None and record.links:
                linkremap.remove(record.links)
                log.warning("recover.removed_links", operation=path.stem, links=record.links)
            if record is None or record.boot != booted:
                # written before a reboot (an empty one: its bytes were lost with the power):
                # its processes are gone, its pids may be anyone's now
                log.warning("recover.record_of_an_earlier_boot", operation=path.stem)
                path.unlink()
                continue
            if record.action == KILL:
                killed = kill_restored(record)
                log.warning("recover.killed_restore", operation=path.stem, pids=killed)
            else:
                thawed = _thaw(record)
                if thawed is None:
                    log.error("recover.kept_record", operation=path.stem)
                    continue
                log.warning("recover.thawed", operation=path.stem, pids=thawed)
            path.unlink()
            recovered += 1
        return recovered


def _parse(data: dict[str, object]) -> HoldRecord:
    helper = data.get("helper") or (0, 0.0)
    return HoldRecord(
        processes=[(int(p), float(t)) for p, t in data["processes"]],  # type: ignore[attr-defined]
        cuda_pids=[int(p) for p in data["cuda_pids"]],  # type: ignore[attr-defined]
        action=str(data.get("action", THAW)),
        names={int(p): str(n) for p, n in dict(data.get("names") or {}).items()},  # type: ignore[call-overload]
        since=float(data.get("since", 0.0)),  # type: ignore[arg-type]
        helper=(int(helper[0]), float(helper[1])),  # type: ignore[index]
        stopped=[int(p) for p in data.get("stopped") or []],  # type: ignore[attr-defined]
        links=[str(p) for p in data.get("links") or []],  # type: ignore[attr-defined]
        boot=str(data.get("boot", "")),
    )


def boot_id() -> str:
    """This boot's id (/proc/sys/kernel/random/boot_id)."""
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def _thaw(record: HoldRecord) -> list[int] | None:
    """SIGCONT + CUDA thaw; the pids thawed, or None if a CUDA thaw failed."""
    live = []
    for pid, started in record.processes:
        now = start_time(pid)
        if now is not None and (not started or abs(now - started) < START_SLACK):
            live.append(pid)
    for pid in live:
        if pid in record.stopped:
            continue
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    failed = [pid for pid in record.cuda_pids if pid in live and not _thaw_cuda(pid)]
    if failed:
        log.error("recover.cuda_still_frozen", cuda_pids=failed)
        return None
    return sorted(live)


def _ours(record: HoldRecord, pid: int, started: float) -> bool:
    """Whether live ``pid`` is the process the restore created (not one that held the pid before)."""
    now = start_time(pid)
    if now is None:
        return False
    if started:
        return abs(now - started) < START_SLACK
    try:
        name = psutil.Process(pid).name()
    except psutil.NoSuchProcess:
        return False
    return now >= record.since - _CLOCK_SLACK and name == record.names.get(pid, name)


def kill_restored(record: HoldRecord) -> list[int]:
    """End CRIU if it still runs (and every task it had forked), then SIGKILL the restored
    processes the record names and every process under them (forked since the tree resumed);
    the pids killed, CRIU's not among them."""
    killed = []
    helper, helper_started = record.helper
    running = start_time(helper) if helper else None
    if running is not None and abs(running - helper_started) < START_SLACK:
        # with the tasks it forked, named as CRIU (not renamed yet)
        killed += [pid for pid in kill_forking([helper]) if pid != helper]
        deadline = time.monotonic() + _HELPER_EXIT_SECONDS
        while start_time(helper) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
    ours = [pid for pid, started in record.processes if pid not in killed and _ours(record, pid, started)]
    return sorted({*killed, *kill_forking(ours)})


def _thaw_cuda(pid: int) -> bool:
    """Bring pid's CUDA state back to running; False if it could not (logged)."""
    try:
        cuda.thaw(pid)
    except (cuda.CudaDriverError, cuda.CudaUnavailable, cuda.CudaStuck, ValueError) as exc:
        log.error("recover.cuda_thaw_failed", pid=pid, error=str(exc))
        return False
    return True
