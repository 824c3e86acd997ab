"""Black-box helpers for issue #10 (all-or-nothing restores, nothing lost) and the
seeded SIGKILL trials shared by tests/test_faults.py and scripts/faults.py.

Everything here talks to the daemon the way a user does: the gRPC API (SnapdClient
or a raw channel), the `snapd` CLI, processes and files on disk. Nothing imports
the daemon's internals beyond what conftest already uses.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from harness import Daemon, Workloads, ask, gone, processes_naming, wait_for
from snapd.v1 import snapd_pb2 as pb
from snapd_client import SnapdClient, SnapdClientError

MiB = 1 << 20
_CHUNK_NAME = re.compile(r"^[0-9a-f]{64}$")


# ---------------------------------------------------------------- the store on disk

def chunk_files(state_dir: Path) -> list[Path]:
    """Every stored chunk file: state_dir/chunks/ab/<64 hex>."""
    root = state_dir / "chunks"
    if not root.exists():
        return []
    return sorted(p for p in root.glob("*/*") if p.is_file() and _CHUNK_NAME.match(p.name))


def chunk_temporaries(state_dir: Path) -> list[Path]:
    """Chunk files not published under their final name (``*.tmp-*``)."""
    root = state_dir / "chunks"
    return sorted(root.rglob("*.tmp-*")) if root.exists() else []


def biggest_chunk(state_dir: Path) -> Path:
    """The largest chunk file: with a random multi-MiB region in the workload, a
    (raw, incompressible) 2 MiB piece of that region."""
    files = chunk_files(state_dir)
    assert files, f"no chunk under {state_dir / 'chunks'}"
    return max(files, key=lambda p: (p.stat().st_size, p.name))


def damage_chunk(path: Path, how: str) -> str:
    """Damage one chunk file on disk; returns its chunk id.
    ``flip``: one payload byte changed; ``truncate``: cut to half; ``delete``: removed."""
    if how == "flip":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x5A
        path.write_bytes(bytes(data))
    elif how == "truncate":
        os.truncate(path, path.stat().st_size // 2)
    elif how == "delete":
        path.unlink()
    else:
        raise ValueError(how)
    return path.name


def quarantined_chunk(state_dir: Path, chunk_id: str) -> Path:
    return state_dir / "quarantine" / "chunks" / chunk_id


class BackgroundCall:
    """``SnapdClient.<method>(*args, **kwargs)`` in a thread, on its own channel, keeping
    every Progress event; ``wait_until(pred)`` returns once an event satisfies ``pred``
    (False if the call ended first)."""

    def __init__(self, target: str, method: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> None:
        self.events: list[pb.Progress] = []
        self.result: Any = None
        self.error: SnapdClientError | None = None
        self.done = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, args=(target, method, args, kwargs, timeout), daemon=True)
        self._thread.start()

    def _run(self, target: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
             timeout: float | None) -> None:
        try:
            with SnapdClient(target, timeout=timeout) as c:
                self.result = getattr(c, method)(*args, on_progress=self._progress, **kwargs)
        except SnapdClientError as exc:
            self.error = exc
        finally:
            with self._cond:
                self.done.set()
                self._cond.notify_all()

    def _progress(self, p: pb.Progress) -> None:
        with self._cond:
            self.events.append(p)
            self._cond.notify_all()

    def wait_until(self, pred: Callable[[pb.Progress], bool], timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if any(pred(e) for e in self.events):
                    return True
                if self.done.is_set():
                    return False
                left = deadline - time.monotonic()
                assert left > 0, f"no matching progress within {timeout} s (events: {self.events})"
                self._cond.wait(left)

    def operation_id(self, timeout: float = 60) -> str:
        self.wait_until(lambda e: bool(e.operation_id), timeout)
        ids = [e.operation_id for e in self.events if e.operation_id]
        assert ids, f"no Progress event carried an operation_id: {self.events}"
        return ids[0]

    def join(self, timeout: float = 120) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the call did not end"


# ---------------------------------------------------------------- processes

def processes_under(tmp: Path) -> list[psutil.Process]:
    """Live processes (daemons aside) whose command line names ``tmp``: the workloads
    of a test and whatever copies of them a restore made."""
    return processes_naming(str(tmp), besides=("snapd_client",))


def stopped(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
    except psutil.NoSuchProcess:
        return False


def stopped_under(tmp: Path) -> list[int]:
    out = []
    for p in processes_under(tmp):
        with contextlib.suppress(psutil.Error):
            if p.status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP):
                out.append(p.pid)
    return out


def start_sentinel(workloads: Workloads, size_mb: int, seed: int) -> tuple[int, Path, str]:
    """A sentinel.py workload: (pid, report, digest of its region)."""
    pid, report = workloads.start("sentinel.py", str(size_mb), str(seed))
    return pid, report, report.read_text().split()[1]


def beat_file(report: Path) -> Path:
    """A sentinel's heartbeat: a symbolic link to "<pid> <ticks>" (sentinel.py), read with ``heartbeat``."""
    return report.with_name(report.name + ".beat")


def heartbeat(beat: Path) -> str | None:
    """The last heartbeat at ``beat`` ("<pid> <ticks>"), None when there is none."""
    try:
        return os.readlink(beat)
    except FileNotFoundError:
        return None


def criu_children(daemon: Daemon) -> list[psutil.Process]:
    """The daemon's `criu` children (not the trees they restore), by their name: CRIU rewrites
    its command line ("criu: dump --rpc -t PID") as it works."""
    assert daemon.proc is not None
    found = []
    with contextlib.suppress(psutil.Error):
        for p in psutil.Process(daemon.proc.pid).children():
            with contextlib.suppress(psutil.Error):
                if p.name() == "criu":
                    found.append(p)
    return found


# ---------------------------------------------------------------- seeded SIGKILL trials

KINDS = ("checkpoint", "checkpoint-leave-running", "restore", "restore-corrupt")
# where a trial may kill the daemon: at the first event of one of these phases (plus a
# random few ms), or None: after a random delay from the start of the call
_KILL_POINTS = {
    "checkpoint": (pb.PHASE_VALIDATE, pb.PHASE_DUMP, pb.PHASE_COMMIT, pb.PHASE_STOP_SOURCE, None, None),
    "checkpoint-leave-running": (pb.PHASE_VALIDATE, pb.PHASE_DUMP, pb.PHASE_COMMIT, None, None),
    "restore": (pb.PHASE_PREPARE, pb.PHASE_RESTORE, pb.PHASE_INJECT, pb.PHASE_INJECT, None),
    "restore-corrupt": (pb.PHASE_PREPARE, pb.PHASE_RESTORE, pb.PHASE_INJECT, pb.PHASE_INJECT, None),
}
# the horizon of a random delay from the start of the call (about an operation's length here)
_HORIZON = {"checkpoint": 0.8, "checkpoint-leave-running": 0.8, "restore": 0.4, "restore-corrupt": 0.4}


def kill_point(kind: str, seed: int) -> int | None:
    """Where a trial of ``kind`` with ``seed`` kills the daemon (``_KILL_POINTS``; run_trial's first draw)."""
    return random.Random(seed).choice(_KILL_POINTS[kind])


def covering_seeds(kind: str, base: int) -> list[int]:
    """For each kill point of ``kind``, the first seed from ``base`` on whose trial kills there:
    the fewest trials that reach every point (their delays, sizes and memory still seeded)."""
    return [next(seed for seed in itertools.count(base) if kill_point(kind, seed) == point)
            for point in dict.fromkeys(_KILL_POINTS[kind])]


@dataclass
class TrialResult:
    kind: str
    seed: int
    kill_point: str
    outcome: str = "?"
    violations: list[str] = field(default_factory=list)

    def describe(self) -> str:
        text = f"{self.kind} seed={self.seed} killed {self.kill_point}: {self.outcome}"
        return text + "".join(f"\n  VIOLATION: {v}" for v in self.violations)


def run_trial(root: Path, kind: str, seed: int, serve_args: tuple[str, ...] = ()) -> TrialResult:
    """One trial: a workload, one operation of ``kind``, a SIGKILL of the daemon at a
    point chosen by ``seed``, a restart, then the invariants of issue #10:

      - no process of the trial is left stopped (state T)
      - a surviving workload (source or restored copy) holds exactly the source's memory
      - a restored copy that did not survive never ran (its heartbeat file never came back)
      - a checkpoint without a listed snapshot left its source running (nothing lost)
      - every listed snapshot is complete (fsck clean, it restores with the right memory)
      - fsck finds no damage but the chunk corrupted on purpose
      - no staging leftovers and no chunk temporaries
    """
    assert kind in KINDS, kind
    rng = random.Random(seed)
    point = rng.choice(_KILL_POINTS[kind])  # kill_point(kind, seed)
    delay = rng.uniform(0, 0.03) if point is not None else rng.uniform(0, _HORIZON[kind])
    # restores get regions big enough that writing them takes tens of ms on a small VM,
    # so that kills land inside the injection too
    size_mb = rng.choice((16, 24, 40) if kind.startswith("checkpoint") else (48, 64, 96))
    result = TrialResult(kind, seed, (f"at {pb.Phase.Name(point)}" if point is not None else "after")
                         + f" +{delay * 1000:.0f} ms ({size_mb} MiB)")
    root.mkdir(parents=True, exist_ok=True)
    daemon = Daemon(root, ("--inject-min-mb", "8", *serve_args))
    workloads = Workloads(root)
    v = result.violations
    try:
        daemon.start()
        pid, report, digest = start_sentinel(workloads, size_mb, rng.randrange(1 << 30))
        beat = beat_file(report)
        corrupt: str | None = None
        snap_id = ""
        if kind.startswith("restore"):
            with daemon.client() as c:
                snap_id = c.checkpoint(pid).id
            wait_for(lambda: gone(pid), 10, "the checkpointed source to stop")
            if kind == "restore-corrupt":
                corrupt = damage_chunk(biggest_chunk(daemon.state_dir), "flip")
            beat.unlink(missing_ok=True)
            call = BackgroundCall(daemon.target, "restore", snap_id)
        else:
            call = BackgroundCall(daemon.target, "checkpoint", pid, leave_running=kind == "checkpoint-leave-running")
        if point is not None:
            call.wait_until(lambda e: e.phase == point)
        time.sleep(delay)  # the fault's random offset, not a wait for a condition
        criu = criu_children(daemon)
        assert daemon.proc is not None
        daemon.proc.kill()
        daemon.proc.wait()
        call.join()
        finished = call.error is None
        # CRIU runs on without the daemon until it finishes or aborts
        with contextlib.suppress(AssertionError):
            wait_for(lambda: not any(live(p) for p in criu), 60, "criu to end")
        daemon.start()
        _check_invariants(daemon, workloads, kind, pid, report, digest, beat, snap_id, corrupt, finished, result)
    except Exception as exc:  # noqa: BLE001 - a trial reports, it does not stop the run
        v.append(f"{type(exc).__name__}: {exc}")
    finally:
        tear_down(daemon, workloads)
    if v:
        result.outcome = "VIOLATION"
    return result


def tear_down(daemon: Daemon, workloads: Workloads) -> None:
    """A trial's end: its processes killed, its daemon stopped (if it runs), its RAM freed."""
    workloads.kill_all()
    if daemon.proc is not None and daemon.proc.poll() is None:
        daemon.stop()
    daemon.remove_ram()


def live(p: psutil.Process) -> bool:
    """Whether ``p`` runs still (not gone, not a zombie)."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _check_invariants(daemon: Daemon, workloads: Workloads, kind: str, pid: int, report: Path, digest: str,
                      beat: Path, snap_id: str, corrupt: str | None, finished: bool, result: TrialResult) -> None:
    v = result.violations
    try:
        wait_for(lambda: not stopped_under(workloads.tmp), 15, "no process of the trial to be stopped")
    except AssertionError:
        v.append(f"FROZEN: pids {stopped_under(workloads.tmp)} left stopped after the restart")
        return
    with daemon.client() as c:
        snaps = [s.id for s in c.list().snapshots]
        alive = not gone(pid)
        if kind.startswith("checkpoint"):
            if alive:
                if ask(pid, report)[1] != digest:
                    v.append("the source's memory changed")
                result.outcome = "committed, source running" if snaps else "rolled back, source running"
            elif not snaps:
                v.append("LOST: no snapshot listed and the source is gone")
            else:
                result.outcome = "committed, source stopped"
        else:
            if alive:
                answer = ask(pid, report)
                if answer[1] != digest:
                    v.append(f"HALF-RESTORED: pid {pid} runs with memory {answer[1][:12]}, not {digest[:12]}")
                result.outcome = "restored" if finished else "restored (daemon died after)"
            else:
                if (ran := heartbeat(beat)) is not None:
                    v.append(f"RAN: the restored pid {pid} ran ({ran}) before it was killed")
                result.outcome = "restore undone"
            if snap_id not in snaps:
                v.append(f"LOST: snapshot {snap_id} no longer listed")
        # every listed snapshot is whole; damage only where we put it
        damage = [d for d in c.fsck().damage if d.chunk != corrupt]
        if damage:
            v.append(f"DAMAGE: {[(d.snapshot_id, d.chunk[:12], d.problem) for d in damage]}")
        if kind != "restore-corrupt":
            for sid in snaps:
                if not gone(pid):
                    workloads.kill_all()
                    wait_for(lambda: gone(pid), 10, "the workload to die")
                try:
                    c.restore(sid, wait_for_exit_seconds=10)
                except SnapdClientError as err:
                    v.append(f"LOST: snapshot {sid} does not restore: {err.error_class}: {err.message}")
                    continue
                if ask(pid, report)[1] != digest:
                    v.append(f"snapshot {sid} restored different memory")
    try:
        wait_for(lambda: not daemon.staging_leftovers(), 10, "staging to be removed")
    except AssertionError:
        v.append(f"LEFTOVERS: staging {daemon.staging_leftovers()}")
    temps = chunk_temporaries(daemon.state_dir)
    if temps:
        v.append(f"LEFTOVERS: chunk temporaries {[p.name for p in temps]}")
