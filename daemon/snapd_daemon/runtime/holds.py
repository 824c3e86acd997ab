"""What an operation has frozen, on disk, so that a restarted daemon can thaw it.

A checkpoint writes its record before the first CUDA lock and updates it when
it SIGSTOPs the tree; a GPU restore writes one before CRIU runs. The record is
removed when the operation has thawed, killed or handed over its processes.
At start, before serving, the daemon thaws every record left by a crash:
SIGCONT to the processes, and CUDA restore + unlock of any still locked or
checkpointed (a process whose CUDA state is running is left alone). A GPU
restore's record names pids alone until CRIU has created them, then by start
time as well.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import structlog

from snapd_daemon.host import cuda
from snapd_daemon.util.fsutil import write_atomic

log = structlog.get_logger()


@dataclass
class HoldRecord:
    # (pid, start time) of each process; start time 0 for one a restore has not created yet
    processes: list[tuple[int, float]] = field(default_factory=list)
    cuda_pids: list[int] = field(default_factory=list)


class HoldJournal:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def write(self, operation_id: str, record: HoldRecord) -> None:
        write_atomic(self.directory / f"{operation_id}.json", json.dumps(asdict(record)).encode())

    def clear(self, operation_id: str) -> None:
        (self.directory / f"{operation_id}.json").unlink(missing_ok=True)

    def thaw_leftovers(self) -> None:
        """Thaw what operations of a crashed daemon left frozen; must run before serving.

        A record whose CUDA thaw failed is kept, so the next start tries again;
        an unreadable record is logged and kept for an operator to look at."""
        for path in sorted(self.directory.glob("*.json")):
            try:
                data = json.loads(path.read_text())
                record = HoldRecord([(int(p), float(t)) for p, t in data["processes"]],
                                    [int(p) for p in data["cuda_pids"]])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("recover.unreadable_record", path=str(path), error=str(exc))
                continue
            live = {pid for pid, started in record.processes if _same(pid, started)}
            for pid in live:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            failed = [pid for pid in record.cuda_pids if pid in live and not _thaw_cuda(pid)]
            if failed:
                log.error("recover.kept_record", operation=path.stem, cuda_pids_still_frozen=failed)
                continue
            log.warning("recover.thawed", operation=path.stem, pids=sorted(live))
            path.unlink()


def _same(pid: int, started: float) -> bool:
    try:
        return not started or abs(psutil.Process(pid).create_time() - started) < 0.01
    except psutil.NoSuchProcess:
        return False


def _thaw_cuda(pid: int) -> bool:
    """Bring pid's CUDA state back to running; False if it could not (logged)."""
    try:
        cuda.thaw(pid)
    except (cuda.CudaDriverError, cuda.CudaUnavailable, cuda.CudaStuck, ValueError) as exc:
        log.error("recover.cuda_thaw_failed", pid=pid, error=str(exc))
        return False
    return True
