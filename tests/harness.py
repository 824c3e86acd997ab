"""The harness the tests and the benchmarks share: a private snapd daemon, workload
processes, and waits on them. No pytest here: the benchmarks import it as a plain module
(`sys.path.insert(0, REPO / "tests")`), the fixtures in conftest.py wrap it."""

from __future__ import annotations

import contextlib
import os
import pty
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from snapd.v1 import snapd_pb2 as pb
from snapd_client import SnapdClient, SnapdClientError
from snapd_daemon.runtime import Settings

WORKLOADS = Path(__file__).parent / "workloads"


class DaemonFailed(RuntimeError):
    """The daemon exited, or did not serve in time, while starting; the message carries its log."""


class Daemon:
    """A `snapd serve` subprocess on a private socket and state directory under ``root``,
    logging JSON to ``root/daemon.log``; CRIU is ``criu``, else $SNAPD_CRIU, else the daemon's
    own choice. ``Daemon.made`` lists every one, so that their RAM directories can be freed."""

    made: ClassVar[list[Daemon]] = []

    def __init__(self, root: Path, extra_args: tuple[str, ...] = (), criu: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.root = root
        self.env = {**os.environ, **env} if env else None
        self.state_dir = root / "state"
        self.socket = root / "snapd.sock"
        self.log = root / "daemon.log"
        self.extra_args = extra_args
        self.criu = criu
        self.proc: subprocess.Popen[bytes] | None = None
        Daemon.made.append(self)

    @property
    def target(self) -> str:
        return f"unix://{self.socket}"

    def cli_args(self) -> list[str]:
        args = [sys.executable, "-m", "snapd_daemon", "serve", "--state-dir", str(self.state_dir),
                "--socket", str(self.socket), "--log-format", "json", *self.extra_args]
        criu = self.criu or os.environ.get("SNAPD_CRIU")
        if criu:
            args += ["--criu", criu]
        return args

    def start(self, timeout: float = 30) -> Daemon:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.cli_args(), stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env=self.env)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        try:
            wait_for(self._serving, timeout, "the daemon to serve", error=DaemonFailed)
        except DaemonFailed as exc:
            raise DaemonFailed(f"{exc}; its log {self.log}:\n{self.log.read_text()}") from None

    def _serving(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise DaemonFailed(f"the daemon exited with {self.proc.returncode}")
        if not self.socket.exists():
            return False
        with grpc.insecure_channel(self.target) as ch:
            try:
                resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
            except grpc.RpcError:
                return False
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

    def staging_leftovers(self) -> list[Path]:
        """Whatever sits in the daemon's staging roots (disk and RAM)."""
        roots = Settings(state_dir=self.state_dir).scratch_dirs()
        return [p for root in roots if root is not None and root.exists() for p in root.iterdir()]

    def client(self) -> SnapdClient:
        return SnapdClient(self.target)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def close(self, timeout: float = 60) -> None:
        """Stop it for good (SIGKILL when SIGTERM has not ended it within ``timeout``),
        if it was started, and free its RAM directory."""
        if self.proc is not None:
            try:
                self.stop(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.remove_ram()

    def remove_ram(self) -> None:
        """Free what this daemon keeps in RAM beyond its life (the hot tier)."""
        ram = Settings(state_dir=self.state_dir).ram_dir()
        if ram is not None:
            shutil.rmtree(ram, ignore_errors=True)


@contextlib.contextmanager
def serving(root: Path, *args: str) -> Iterator[Daemon]:
    """A daemon started with ``args`` in the new directory ``root``, stopped at the end."""
    root.mkdir()
    d = Daemon(root, args).start()
    try:
        yield d
    finally:
        d.stop()


class Workloads:
    """Workload processes started by a test; reaped as they die, killed at teardown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started = 0

    def start(self, script: str, *args: str, under_shell: bool = False) -> tuple[int, Path]:
        """Start a workload as a session leader, or, with ``under_shell``, as the child of a
        shell that leads its session (the shape of a job started from a terminal)."""
        self.started += 1
        report = self.tmp / f"{script}.{self.started}.report"
        command = [sys.executable, str(WORKLOADS / script), *args, str(report)]
        if under_shell:
            command = ["sh", "-c", '"$@" & wait', "sh", *command]
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True, cwd=WORKLOADS)
        threading.Thread(target=proc.wait, daemon=True).start()
        wait_for(lambda: report.exists(), 60, f"{script} to report")
        if under_shell:
            return psutil.Process(proc.pid).children()[0].pid, report
        return proc.pid, report

    def kill_all(self) -> None:
        """Kill every process, daemons aside, whose command line names this test's
        directory: the workloads, their children and any restored copies of them."""
        for proc in processes_naming(str(self.tmp), besides=("snapd_client", "snapd_daemon")):
            with contextlib.suppress(psutil.Error):
                proc.kill()


def start_piped(tmp: Path) -> tuple[int, Path]:
    """ticker.py | cat > out, started from a shell: the ticker's stdout and stderr pipe's
    reader (cat) is outside the ticker's tree. (The ticker's pid, out.)"""
    report, out = tmp / "ticker.report", tmp / "piped.out"
    shell = subprocess.Popen(["sh", "-c", '"$1" -u ticker.py "$2" 2>&1 | cat > "$3"', "sh", sys.executable, report, out],
                             cwd=WORKLOADS, start_new_session=True, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    threading.Thread(target=shell.wait, daemon=True).start()
    wait_for(report.exists, 30, "the ticker to start")
    return int(report.read_text()), out


class BackgroundCheckpoint:
    """A checkpoint through its own client in a thread; ``wait_for_phase`` returns once
    progress of ``phase`` with bytes moving has arrived (``operation_id`` is known then)."""

    def __init__(self, target: str, pid: int, phase: int, **kwargs: object) -> None:
        self.phase = phase
        self.operation_id = ""
        self.reached = threading.Event()
        self.snapshot: pb.Snapshot | None = None
        self.error: SnapdClientError | None = None
        self.thread = threading.Thread(target=self._run, args=(target, pid, kwargs))
        self.thread.start()

    def _run(self, target: str, pid: int, kwargs: dict[str, object]) -> None:
        with SnapdClient(target) as c:
            try:
                self.snapshot = c.checkpoint(pid, on_progress=self._progress, **kwargs)  # type: ignore[arg-type]
            except SnapdClientError as exc:
                self.error = exc

    def _progress(self, p: pb.Progress) -> None:
        self.operation_id = p.operation_id
        if p.phase == self.phase and p.bytes_done:
            self.reached.set()

    def wait_for_phase(self, timeout: float = 120) -> None:
        assert self.reached.wait(timeout), f"no progress of phase {self.phase} within {timeout} s"

    def join(self, timeout: float = 120) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the checkpoint did not end"


def snapd(daemon: Daemon | None, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the `snapd` CLI against ``daemon`` (None: an address nothing listens on)."""
    target = daemon.target if daemon else "unix:///nonexistent/snapd.sock"
    return subprocess.run([sys.executable, "-m", "snapd_client", "--target", target, *args],
                          capture_output=True, text=True, timeout=300)


def command_helps() -> dict[str, str]:
    """`snapd COMMAND --help` of every command of the installed `snapd` (the client's group with
    the daemon's commands added, as its entry point adds them), rendered in this process by
    click's runner: the same text, without a Python start per command (the entry point itself
    is tested by running it)."""
    from click.testing import CliRunner

    from snapd_client.cli import cli
    from snapd_daemon.server.cli import exit_codes, run, serve

    for command in (serve, exit_codes, run):
        cli.add_command(command)
    runner = CliRunner()
    helps = {}
    for name in cli.commands:
        result = runner.invoke(cli, [name, "--help"], prog_name="snapd", catch_exceptions=False)
        assert result.exit_code == 0, (name, result.output)
        helps[name] = result.output
    return helps


def snapd_on_a_terminal(daemon: Daemon, *args: str,
                        on_output: Callable[[bytes, subprocess.Popen[str]], None] | None = None,
                        ) -> tuple[int, str, str]:
    """The `snapd` CLI against ``daemon`` with its stderr on a pseudo-terminal (stdout a pipe):
    (exit code, stdout, what the terminal got). ``on_output`` sees the terminal's output so far,
    and the process, after each read."""
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "snapd_client", "--target", daemon.target, *args],
                            stdout=subprocess.PIPE, stderr=secondary, text=True)
    os.close(secondary)
    seen = bytearray()
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:  # EIO: the terminal's last writer is gone
            break
        if not data:
            break
        seen += data
        if on_output:
            on_output(bytes(seen), proc)
    os.close(primary)
    stdout, _ = proc.communicate(timeout=120)
    return proc.returncode, stdout, seen.decode(errors="replace")


def error_of(call: Callable[[], object]) -> SnapdClientError:
    """The SnapdClientError ``call`` raises (failing the test when it raises none)."""
    try:
        call()
    except SnapdClientError as exc:
        return exc
    raise AssertionError("the call succeeded; a SnapdClientError was expected")


def wait_for(cond: Callable[[], object], timeout: float, what: str,
             error: type[Exception] = AssertionError, interval: float = 0.02) -> None:
    """Poll ``cond`` until it is true; raise ``error`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return
        if time.monotonic() >= deadline:
            raise error(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def mounts_naming(*markers: str) -> list[str]:
    """The lines of this mount namespace's mountinfo that hold any of ``markers``."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line for line in lines if any(marker in line for marker in markers)]


def processes_naming(*markers: str, besides: tuple[str, ...] = ()) -> list[psutil.Process]:
    """Live processes whose command line holds any of ``markers``, but none with an argument
    in ``besides`` (a daemon's, a client's)."""
    found = []
    for pid in psutil.pids():  # not process_iter: its cache skips a pid that a restore reused
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            argv = proc.cmdline()
            joined = " ".join(argv)
            if any(marker in joined for marker in markers) and not set(besides) & set(argv):
                found.append(proc)
    return found


def wait_unmounted(*markers: str, timeout: float = 60) -> None:
    """Wait until no mount names any of ``markers`` and no process (podman's conmon, its
    `container cleanup`) does. Podman tears a removed container's mounts (overlay, shm, netns)
    down after `podman rm` returns; a `snapd run` tree checkpointed meanwhile records one (its
    mount namespace copies the host's), and its restore then fails on a mount the host no
    longer has (tests/conftest.py)."""
    wait_for(lambda: not mounts_naming(*markers) and not processes_naming(*markers), timeout,
             f"the mounts and processes naming {markers} to be gone")


def ask(pid: int, report: Path, timeout: float = 30) -> list[str]:
    """SIGUSR1 ``pid`` and return the fields of the report it writes in answer."""
    before = report.stat().st_mtime_ns if report.exists() else 0
    os.kill(pid, signal.SIGUSR1)
    try:
        wait_for(lambda: report.exists() and report.stat().st_mtime_ns != before, timeout, f"report of pid {pid}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {process_state(pid)}") from None
    return report.read_text().split()


def process_state(pid: int) -> str:
    """What keeps ``pid`` from answering, in one line: its state, parent, signal masks and
    where it waits, as /proc tells them (or that it is gone)."""
    keys = ("State", "PPid", "SigPnd", "ShdPnd", "SigBlk", "SigCgt")
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        wchan = Path(f"/proc/{pid}/wchan").read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError):
        return f"pid {pid} is gone"
    fields = dict(line.split(":\t", 1) for line in status if ":\t" in line)
    shown = ", ".join(f"{k} {fields.get(k, '?').strip()}" for k in keys)
    return f"pid {pid} ({argv or 'no command line'}): {shown}, waits in {wchan or '-'}"


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def restore_at_once(target: str, ref: str, count: int, **options: object) -> list[object]:
    """``count`` Restore calls of ``ref`` at once, each through its own client: results or errors."""
    out: list[object] = [None] * count

    def one(i: int) -> None:
        with SnapdClient(target) as c:
            try:
                out[i] = c.restore(ref, **options)  # type: ignore[arg-type]
            except SnapdClientError as err:
                out[i] = err

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return out
