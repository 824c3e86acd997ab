"""Shared by the benchmarks: a private snapd daemon, phase clocks, criu CLI runs."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from snapd.v1 import snapd_pb2 as pb
from snapd_daemon.runtime import Settings

REPO = Path(__file__).resolve().parents[2]
PR_SET_CHILD_SUBREAPER = 36
GB = 1e9
PHASE_NAMES = {v.number: v.name.removeprefix("PHASE_").lower().replace("_", "-") for v in pb.Phase.DESCRIPTOR.values}


class BenchError(Exception):
    pass


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.01)


def become_subreaper() -> None:
    """Orphaned restored workloads are reparented to us, so we can reap them."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise BenchError(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")


def locate_criu() -> str:
    out = subprocess.run([str(REPO / "scripts" / "install-criu.sh")], check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def image_bytes(images: Path) -> int:
    return sum(p.stat().st_size for p in images.iterdir() if p.is_file() and p.suffix != ".log")


class Daemon:
    """A private `snapd serve` on its own socket and state directory."""

    def __init__(self, root: Path, criu: str, serve_options: tuple[str, ...] = ()) -> None:
        self.serve_options = serve_options
        self.state_dir = root / "state"
        self.socket = root / "snapd.sock"
        self.log = root / "daemon.log"
        self.criu = criu
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = 60) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "snapd_client", "serve", "--state-dir", str(self.state_dir),
                 "--socket", str(self.socket), "--log-format", "json", "--criu", self.criu, *self.serve_options],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )
        wait_until(self._serving, timeout, f"the daemon to serve (log: {self.log})")

    def _serving(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise BenchError(f"daemon exited with status {self.proc.returncode}:\n{self.log.read_text()}")
        if not self.socket.exists():
            return False
        with grpc.insecure_channel(self.target) as channel:
            try:
                resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
            except grpc.RpcError:
                return False
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

    def stop(self) -> None:
        """Stop the daemon and remove its RAM directory (staging and hot tier)."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        ram = Settings(state_dir=self.state_dir).ram_dir()
        if ram is not None:
            shutil.rmtree(ram, ignore_errors=True)


class PhaseClock:
    """Client-side phase timings: a phase lasts from its first progress event to the next phase's."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.marks: list[tuple[str, float]] = []

    def __call__(self, progress: pb.Progress) -> None:
        name = PHASE_NAMES.get(progress.phase, "?")
        if not self.marks or self.marks[-1][0] != name:
            self.marks.append((name, time.monotonic()))

    def durations(self, ended: float) -> dict[str, float]:
        ends = [t for _name, t in self.marks[1:]] + [ended]
        return {name: round(end - t, 3) for (name, t), end in zip(self.marks, ends, strict=True)}


def run_criu(criu: str, args: list[str], images: Path, log_name: str) -> float:
    """Run one criu CLI command and return its wall time; a failure shows the log's errors."""
    started = time.monotonic()
    proc = subprocess.run([criu, *args, "-D", str(images), "-o", log_name],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        log = images / log_name
        errors = [ln for ln in log.read_text(errors="replace").splitlines() if "Error" in ln] if log.exists() else []
        raise BenchError(f"criu {args[0]} failed with status {proc.returncode}:\n{proc.stderr}\n"
                         + "\n".join(errors[-12:]))
    return elapsed


def fsync_images(images: Path) -> float:
    started = time.monotonic()
    for path in images.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return time.monotonic() - started


def reap_pid(pid: int, timeout: float = 60) -> None:
    """Wait until ``pid`` is gone and free: reaped by us (a subreaper) or by whoever is its parent."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            if not os.path.exists(f"/proc/{pid}"):
                return
        if time.monotonic() >= deadline:
            raise BenchError(f"pid {pid} still not reaped after {timeout:.0f} s")
        time.sleep(0.01)


def drop_caches() -> None:
    """Write back and drop the page cache, so that the next read comes from the disk."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
