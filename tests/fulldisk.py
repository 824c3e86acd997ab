"""Full-disk trials (issue #23): a real, small file system that fills up at one phase of one
operation, shared by tests/test_full_disk.py and scripts/faults.py (``--campaign full-disk``).

Each trial mounts a tmpfs of a few MiB (``size=``), puts the daemon's whole root on it (state
directory: store, staging, hold records, restore logs; its socket and its log file), or only
the part the phase is about, fills it before the operation or, with a filler that grows a file
until ENOSPC, while the operation runs, and checks the invariants of ``run_phase``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from faultlib import BackgroundCall, beat_file, heartbeat, start_sentinel, stopped, tear_down
from harness import Daemon, Workloads, ask, gone, wait_for
from remotelib import remote_args
from s3server import S3Server
from snapd.v1 import snapd_pb2 as pb
from snapd_client import SnapdClient

MiB = 1 << 20
FS_MB = 96
SIZE_MB = 8
CALL_SECONDS = 120
# phase -> the error classes a refusal may carry (every one exits 18)
PHASES: dict[str, tuple[str, ...]] = {
    "checkpoint-before": ("StoreFull",),
    "checkpoint-mid": ("StoreFull",),
    "checkpoint-holds": ("StoreFull",),
    "restore-before": ("RestoreSpaceFull",),
    "restore-mid": ("RestoreSpaceFull",),
    "restore-holds": ("RestoreSpaceFull",),
    "import-before": ("ImportSpaceFull",),
    "import-mid": ("ImportSpaceFull",),
    "pull-before": ("PullSpaceFull",),
    "pull-mid": ("PullSpaceFull",),
    "restore-remote-before": ("RestoreSpaceFull",),
    "restore-remote-mid": ("RestoreSpaceFull",),
    "export-before": ("ExportSpaceFull",),
    "export-mid": ("ExportSpaceFull",),
    "log-full": (),
    "log-closed": (),
}
STORE_FULL_EXIT = 18
# phases that need an S3 server (the remote tier): a pull, a restore of a snapshot only the bucket holds
REMOTE_PHASES = ("pull-before", "pull-mid", "restore-remote-before", "restore-remote-mid")
_TEMPORARY_MARKS = (".tmp-", ".partial-")


@dataclass
class PhaseResult:
    phase: str
    outcome: str = "?"
    error: str = ""
    violations: list[str] = field(default_factory=list)

    def describe(self) -> str:
        text = f"{self.phase}: {self.outcome}" + (f" ({_cut(self.error)})" if self.error else "")
        return text + "".join(f"\n  VIOLATION: {_cut(v)}" for v in self.violations)


def _cut(text: str, limit: int = 600) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def mount_tmpfs(where: Path, size_mb: int) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(where)],
                   check=True, capture_output=True)
    return where


def unmount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


def fill(fs: Path, name: str = "filler", leave: int = 0) -> Path:
    """Grow ``fs/name`` until the file system says ENOSPC (or has only ``leave`` bytes free);
    the file."""
    path = fs / name
    piece = b"\xa5" * (256 << 10)
    with open(path, "ab", buffering=0) as f:
        while os.statvfs(fs).f_bavail * os.statvfs(fs).f_frsize > leave + len(piece):
            try:
                f.write(piece)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    if leave:
        return path
    for size in (64 << 10, 4096, 1):  # the last partial blocks
        with contextlib.suppress(OSError), open(path, "ab", buffering=0) as f:
            while True:
                f.write(b"\xa5" * size)
    return path


class Filler:
    """Fills ``fs`` from another thread once ``trigger()`` holds (polled every ms)."""

    def __init__(self, fs: Path, trigger: Callable[[], bool]) -> None:
        self.fs = fs
        self.trigger = trigger
        self.filled = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.trigger():
                fill(self.fs, "filler-mid")
                self.filled.set()
                return
            time.sleep(0.001)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def temporaries(*roots: Path) -> list[Path]:
    """Files under ``roots`` that are temporaries by their name, or staging directories."""
    found: list[Path] = []
    for root in roots:
        for dirpath, dirs, files in os.walk(root):
            found += [Path(dirpath, n) for n in files if any(m in n for m in _TEMPORARY_MARKS)]
            if Path(dirpath).name == "staging":
                found += [Path(dirpath, d) for d in dirs]
    return found


def cli(daemon: Daemon, *args: str, timeout: float = CALL_SECONDS) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "snapd_client", "--target", daemon.target, "--json", *args],
                          capture_output=True, text=True, timeout=timeout)


def _check_refusal(result: PhaseResult, expected: tuple[str, ...], error_class: str, exit_code: int,
                   message: str, fs: Path) -> None:
    v = result.violations
    result.error = f"{error_class} exit {exit_code}: {message}"
    if error_class not in expected or exit_code != STORE_FULL_EXIT:
        v.append(f"expected {'/'.join(expected)} (exit {STORE_FULL_EXIT}), got {error_class} exit {exit_code}")
    for word in ("Errno", "OSError", "Exception", "Traceback"):
        if word in message:
            v.append(f"the message shows {word!r}: {message}")
    if str(fs) not in message:
        v.append(f"the message does not name the full file system {fs}: {message}")
    if result.phase.startswith(("import", "export")) and "process" in message:
        v.append(f"an {result.phase.split('-')[0]}'s message speaks of a process: {message}")


def _error_of(run: subprocess.CompletedProcess[str]) -> tuple[str, int, str]:
    import json

    try:
        err = json.loads(run.stderr.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return "(no JSON error)", run.returncode, run.stderr[-2000:]
    return str(err.get("error")), run.returncode, str(err.get("message"))


def run_phase(base: Path, phase: str, seed: int = 23, s3: S3Server | None = None) -> PhaseResult:
    """One trial of ``phase`` under ``base`` (unmounted at the end); ``s3`` for REMOTE_PHASES.
    Invariants:

      - the call ends (no hang) with the phase's class and exit code 18, a message naming the
        full file system and no Python exception name (``log-*``: the operations succeed);
      - no temporary is left, neither after the call nor after a daemon restart on the
        still-full disk;
      - a checkpoint's source runs on, not stopped, its memory unchanged; a failed restore
        leaves no process and none of it ran; nothing is listed that was not whole;
      - once space is back the store is consistent (fsck clean) and every snapshot restores.
    """
    assert phase in PHASES, phase
    result = PhaseResult(phase)
    v = result.violations
    base.mkdir(parents=True, exist_ok=True)
    fs = mount_tmpfs(base / "fs", FS_MB)
    workloads = Workloads(base)
    kind = phase.split("-")[0]
    serve = ["--scratch", "ram" if phase.endswith("holds") else "disk", "--inject-min-mb", "0"]
    if phase in REMOTE_PHASES:
        assert s3 is not None, f"{phase} needs an S3 server"
        serve += remote_args(base, s3, f"fulldisk-{base.name}-{seed}-{time.time_ns()}")
    daemon = Daemon(fs, tuple(serve))
    extra: list[Path] = []
    try:
        if kind == "log":
            daemon = Daemon(base / "d", tuple(serve))
            daemon.root.mkdir()
            daemon.log = fs / "daemon.log"
        if phase == "log-closed":
            _start_without_stderr(daemon)
        else:
            daemon.start()
        pid, report, digest = start_sentinel(workloads, SIZE_MB, seed)
        snap = ""
        if kind in ("restore", "import", "export", "log", "pull"):
            with daemon.client() as c:
                snap = c.checkpoint(pid).id
            wait_for(lambda: gone(pid), 10, "the checkpointed source to stop")
        if phase in REMOTE_PHASES:  # only the bucket holds it
            with daemon.client() as c:
                c.push(snap)
                c.delete(snap)
                c.gc()
        if kind == "import":
            stream = base / "export.snapd"
            run = cli(daemon, "export", snap, "-o", str(stream))
            assert run.returncode == 0, run.stderr
            with daemon.client() as c:
                c.delete(snap)
                c.gc()
        if kind == "export":
            out_fs = mount_tmpfs(base / "out", 4 if phase.endswith("mid") else 1)
            extra.append(out_fs)
            if phase.endswith("before"):
                fill(out_fs)
            run = cli(daemon, "export", snap, "-o", str(out_fs / "snap.snapd"))
            _expect_refusal(result, run, out_fs)
            left = temporaries(out_fs) + [p for p in out_fs.iterdir() if p.name.startswith("snap")]
            if left:
                v.append(f"LEFTOVERS: {left}")
        elif kind == "log":
            fill(fs)
            with SnapdClient(daemon.target, timeout=CALL_SECONDS) as c:
                c.restore(snap)
                assert ask(pid, report)[1] == digest
                c.checkpoint(pid)
                dropped = c.status().log_lines_dropped
            if not dropped:
                v.append("the daemon counted no dropped log line")
            result.outcome, result.error = "succeeded, log failing", f"{dropped} log lines dropped"
        else:
            _one_operation(result, daemon, fs, phase, pid, report, digest, snap, base)
        if kind != "log":
            with contextlib.suppress(AssertionError):  # staging is removed in the background
                wait_for(lambda: not temporaries(fs), 10, "staging to be removed")
            left = temporaries(fs)
            if left:
                v.append(f"LEFTOVERS after the call: {left}")
            daemon.stop()
            daemon.start()
            left = temporaries(fs)
            if left:
                v.append(f"LEFTOVERS after a restart on the full disk: {left}")
        for filler in fs.glob("filler*"):
            filler.unlink()
        if phase in REMOTE_PHASES:
            with daemon.client() as c:
                c.pull(snap)
        _check_store(result, daemon, workloads, kind, pid, report, digest)
    except Exception as exc:  # noqa: BLE001 - a trial reports, it does not stop the run
        v.append(f"{type(exc).__name__}: {exc}")
    finally:
        tear_down(daemon, workloads)
        for mounted in (*extra, fs):
            unmount(mounted)
    if v:
        result.outcome = "VIOLATION"
    return result


def _start_without_stderr(daemon: Daemon) -> None:
    """The daemon with its stderr (and stdout) closed, as a careless supervisor may start it."""
    daemon.proc = subprocess.Popen(daemon.cli_args(), stdin=subprocess.DEVNULL, start_new_session=True,
                                   preexec_fn=lambda: (os.close(1), os.close(2)))
    daemon.wait_ready()


def _expect_refusal(result: PhaseResult, run: subprocess.CompletedProcess[str], fs: Path) -> None:
    error_class, code, message = _error_of(run)
    if code == 0:
        result.outcome = "completed before the disk filled"
        return
    result.outcome = "refused"
    _check_refusal(result, PHASES[result.phase], error_class, code, message, fs)


def _one_operation(result: PhaseResult, daemon: Daemon, fs: Path, phase: str, pid: int, report: Path,
                   digest: str, snap: str, base: Path) -> None:
    """The operation of a checkpoint-, restore- or import- phase, with the disk filled before or
    while it runs; checks what the call returned and the processes."""
    v = result.violations
    kind = phase.split("-")[0]
    beat = beat_file(report)
    filler: Filler | None = None
    if phase.endswith(("before", "holds")):
        fill(fs)
    if phase.endswith("mid") and (kind in ("import", "pull") or phase in REMOTE_PHASES):
        # room for a few of its chunks: it runs out of space mid-way (a racing filler would often
        # lose to a stream this small), and a filler takes the rest once the first chunk is staged
        fill(fs, "filler-room", leave=4 * MiB)
    if phase.endswith("mid") and kind in ("import", "pull"):
        chunks = daemon.state_dir / "chunks"
        filler = Filler(fs, lambda: any(".tmp-" in n for _, _, files in os.walk(chunks) for n in files))
    if kind == "import":
        run = cli(daemon, "import", str(base / "export.snapd"))
        _expect_refusal(result, run, fs)
    elif kind == "pull":
        run = cli(daemon, "pull", snap)
        _expect_refusal(result, run, fs)
    else:
        if kind == "restore":
            beat.unlink(missing_ok=True)
            call = BackgroundCall(daemon.target, "restore", snap, timeout=CALL_SECONDS)
        else:
            call = BackgroundCall(daemon.target, "checkpoint", pid, timeout=CALL_SECONDS)
        if phase.endswith("mid") and kind == "restore":  # once the images are being staged
            staging = daemon.state_dir / "staging"
            filler = Filler(fs, lambda: any(files for _, _, files in os.walk(staging)))
        elif phase.endswith("mid"):
            filler = Filler(fs, lambda: any(e.phase == pb.PHASE_DUMP for e in call.events))
        call.join(CALL_SECONDS + 10)
        if call.error is None:
            result.outcome = "completed before the disk filled"
        else:
            result.outcome = "refused"
            _check_refusal(result, PHASES[phase], call.error.error_class, call.error.exit_code, call.error.message,
                           fs)
        if kind == "checkpoint" and call.error is not None:
            if gone(pid) or stopped(pid):
                v.append(f"the source pid {pid} is {'gone' if gone(pid) else 'stopped'} after a failed checkpoint")
            elif ask(pid, report)[1] != digest:
                v.append("the source's memory changed")
        if kind == "restore" and call.error is not None:
            with contextlib.suppress(AssertionError):
                wait_for(lambda: gone(pid), 10, "no process of the failed restore")
            if not gone(pid):
                v.append(f"HALF-RESTORED: pid {pid} lives after a failed restore")
            if heartbeat(beat) is not None:
                v.append(f"RAN: the restored pid {pid} ran before it was killed")
    if filler is not None:
        filler.stop()


def _check_store(result: PhaseResult, daemon: Daemon, workloads: Workloads, kind: str, pid: int, report: Path,
                 digest: str) -> None:
    """Space is back: fsck clean, every listed snapshot restores with the source's memory."""
    v = result.violations
    with daemon.client() as c:
        damage = list(c.fsck().damage)
        if damage:
            v.append(f"DAMAGE: {[(d.snapshot_id, d.chunk[:12], d.problem) for d in damage]}")
        for snap in c.list().snapshots:
            workloads.kill_all()
            wait_for(lambda: gone(pid), 10, "the workload to die")
            c.restore(snap.id, wait_for_exit_seconds=10)
            try:
                answer = ask(pid, report)
            except AssertionError as exc:
                v.append(f"snapshot {snap.id} restored, then: {exc}")
                continue
            if answer[1] != digest:
                v.append(f"snapshot {snap.id} restored different memory")
