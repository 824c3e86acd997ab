"""Nothing half-visible and nothing left frozen: daemon crashes, SIGTERM drain, full disks."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import psutil
import pytest

from faultlib import criu_children, live
from harness import BackgroundCheckpoint, Daemon, Workloads, ask, gone, wait_for
from snapd.v1 import snapd_pb2 as pb
from snapd_client import SnapdClientError
from snapd_daemon.host.treekill import kill_forking
from snapd_daemon.runtime import Settings
from snapd_daemon.runtime.holds import KILL, HoldJournal, HoldRecord


def _state(pid: int) -> str:
    return psutil.Process(pid).status()


FORKING_CHAIN = """
import os, sys, time
os.setsid()
print(flush=True)
for _ in range(int(sys.argv[1])):
    time.sleep(0.001)
    if os.fork():  # the parent stays, its child forks the next one
        break
time.sleep(600)
"""


def _in_session(sid: int) -> list[int]:
    alive = []
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getsid(proc.pid) == sid:
                alive.append(proc.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return alive


def test_a_tree_still_forking_is_killed_whole() -> None:
    """What ends a CRIU that is forking the tree it restores (a cancel, a corrupt chunk during
    post-copy), or a restored tree: the processes forked while it kills are killed too. A
    chain that forks a process every millisecond or so is killed mid-growth; nothing of it
    is left (listing its processes, then killing them, leaves the latest ones alive,
    reparented away)."""
    chain = subprocess.Popen([sys.executable, "-c", FORKING_CHAIN, "400"], stdout=subprocess.PIPE)
    try:
        chain.stdout.readline()  # type: ignore[union-attr]  # in its own session: it starts forking
        wait_for(lambda: len(_in_session(chain.pid)) >= 10, 30, "the chain to grow")
        killed = kill_forking([chain.pid])
        assert killed[0] == chain.pid and len(killed) >= 10
        chain.wait(10)
        wait_for(lambda: _in_session(chain.pid) == [], 10, "every process of the chain to be gone")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(chain.pid, signal.SIGKILL)  # its group, whatever it left
        chain.stdout.close()  # type: ignore[union-attr]
        chain.wait()


def test_sigkill_mid_checkpoint_leaves_nothing_and_process_running(daemon: Daemon, workloads: Workloads) -> None:
    pid, report = workloads.start("memhold.py", "1024")
    _, digest, _ = report.read_text().split()
    checkpoint = BackgroundCheckpoint(daemon.target, pid, pb.PHASE_DUMP)
    checkpoint.wait_for_phase()
    wait_for(lambda: criu_children(daemon), 30, "the daemon's criu to start")
    criu = criu_children(daemon)  # its CRIU only: another one on the host is not this test's
    assert daemon.proc is not None
    daemon.proc.kill()
    daemon.proc.wait()
    checkpoint.join()
    assert checkpoint.error is not None and checkpoint.error.exit_code == 3  # the daemon vanished under the client
    wait_for(lambda: not any(live(p) for p in criu), 60, "criu to finish")
    wait_for(lambda: _state(pid) in (psutil.STATUS_SLEEPING, psutil.STATUS_RUNNING), 10, "the target to run")
    assert ask(pid, report)[1] == digest

    daemon.start()
    with daemon.client() as c:
        assert list(c.list().snapshots) == []
    wait_for(lambda: daemon.staging_leftovers() == [], 10, "staging to be removed")
    assert list((daemon.state_dir / "manifests").iterdir()) == []


def test_restart_resumes_processes_a_crashed_daemon_had_stopped(daemon: Daemon, workloads: Workloads) -> None:
    """A daemon killed while it held a tree stopped leaves a hold record; the next start resumes it."""
    pid, report = workloads.start("memhold.py", "4")
    daemon.stop()
    os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: _state(pid) == psutil.STATUS_STOPPED, 10, "the target to stop")
    HoldJournal(daemon.state_dir / "holds").write(
        "op-crashed", HoldRecord([(pid, psutil.Process(pid).create_time())], [])
    )
    leftover = Settings(state_dir=daemon.state_dir).scratch_dirs()[0] / "op-crashed" / "images"
    leftover.mkdir(parents=True)
    (leftover / "pages-1.img").write_bytes(b"\0" * 4096)

    daemon.start()
    wait_for(lambda: _state(pid) != psutil.STATUS_STOPPED, 10, "the target to be resumed")
    assert not leftover.exists() and not list((daemon.state_dir / "holds").iterdir())
    assert ask(pid, report)[0] == str(pid)


def test_recovery_survives_bad_records_and_runs_before_configuration(daemon: Daemon, workloads: Workloads,
                                                                     tmp_path: Path) -> None:
    """A torn record and one naming a vanished pid do not stop the start; a stopped tree is
    resumed even when the daemon then refuses its configuration and exits. Records of an
    earlier boot (another boot id; an empty file) are dropped unacted: one that would kill
    the live process by pid and name leaves it alone."""
    pid, report = workloads.start("memhold.py", "4")
    daemon.stop()
    os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: _state(pid) == psutil.STATUS_STOPPED, 10, "the target to stop")
    holds = daemon.state_dir / "holds"
    HoldJournal(holds).write("op-a", HoldRecord([(pid, psutil.Process(pid).create_time())], []))
    HoldJournal(holds).write("op-b", HoldRecord([(4_000_000, 1.0)], []))
    (holds / "op-c.json").write_text('{"processes": [[1')
    HoldJournal(holds).write("op-d", HoldRecord([(pid, 0.0)], [], action=KILL, names={pid: psutil.Process(pid).name()},
                                                boot="an-earlier-boot"))
    (holds / "op-e.json").write_text("")
    broken = Daemon(tmp_path / "broken", ("--cgroup-root", "/proc/not-a-cgroup"))
    broken.root.mkdir()
    broken.state_dir = daemon.state_dir
    with pytest.raises(RuntimeError, match="daemon exited"):
        broken.start()
    wait_for(lambda: _state(pid) != psutil.STATUS_STOPPED, 10, "the target to be resumed")
    assert sorted(p.name for p in holds.iterdir()) == ["op-c.json"]  # kept for an operator, logged
    assert "recover.unreadable_record" in broken.log.read_text()
    assert broken.log.read_text().count("recover.record_of_an_earlier_boot") == 2
    daemon.start()
    assert ask(pid, report)[0] == str(pid)


def test_sigterm_drains_running_checkpoint(daemon: Daemon, workloads: Workloads) -> None:
    pid, report = workloads.start("memhold.py", "768")
    _, digest, _ = report.read_text().split()
    checkpoint = BackgroundCheckpoint(daemon.target, pid, pb.PHASE_DUMP)
    checkpoint.wait_for_phase()
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGTERM)
    checkpoint.join()
    assert checkpoint.snapshot is not None, checkpoint.error
    assert daemon.proc.wait(60) == 0
    wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
    daemon.start()
    with daemon.client() as c:
        snap = c.list().snapshots[0]
        c.restore(snap.id)
    assert ask(pid, report)[1] == digest


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)], check=True, capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_is_a_clean_error(tmp_path: Path, small_tmpfs: Path, workloads: Workloads) -> None:
    d = Daemon(tmp_path)
    d.state_dir = small_tmpfs / "state"
    d.start()
    try:
        pid, report = workloads.start("memhold.py", "96")
        _, digest, _ = report.read_text().split()
        with d.client() as c:
            with pytest.raises(SnapdClientError) as info:
                c.checkpoint(pid)
            err = info.value
            assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED and err.error_class == "StoreFull"
            assert str(d.state_dir) in err.message and "the process was left running" in err.message
            assert list(c.list().snapshots) == []
        wait_for(lambda: d.staging_leftovers() == [], 10, "staging to be removed")
        assert [p for p in d.state_dir.rglob("*") if ".tmp-" in p.name] == []  # not only after a restart
        assert ask(pid, report)[1] == digest
    finally:
        d.stop()


def test_criu_failure_keeps_its_log(daemon: Daemon, tmp_path: Path) -> None:
    """CRIU refuses a stream unix socket whose peer is outside the tree; the error names a
    copy of CRIU's log under the state directory (not deleted staging), and only the newest
    20 copies stay."""
    kept = daemon.state_dir / "criu-logs"
    kept.mkdir()
    for i in range(25):
        old = kept / f"op-old{i:02d}-dump.log"
        old.write_text("old\n")
        os.utime(old, (1_000_000 + i, 1_000_000 + i))
    ours, theirs = socket.socketpair()
    holder = subprocess.Popen(["sleep", "300"], pass_fds=(theirs.fileno(),), start_new_session=True,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    theirs.close()
    try:
        with daemon.client() as c, pytest.raises(SnapdClientError) as info:
            c.checkpoint(holder.pid)
        err = info.value
        assert err.error_class == "CriuFailed" and err.exit_code == 16
        logs = sorted(kept.glob("op-*-dump.log"))
        new = [p for p in logs if not p.name.startswith("op-old")]
        assert len(new) == 1 and f"criu log ({new[0]})" in err.message
        assert "Error" in new[0].read_text()
        assert len(logs) == 20 and not (kept / "op-old05-dump.log").exists()
        assert _state(holder.pid) in (psutil.STATUS_SLEEPING, psutil.STATUS_RUNNING)
    finally:
        holder.kill()
        holder.wait()
        ours.close()


def test_restart_kills_what_a_kill_record_names_and_nothing_else(daemon: Daemon, workloads: Workloads) -> None:
    """A KILL record (a restore, or a checkpoint past its commit point, cut short by a
    killed daemon) makes the next start SIGKILL the processes it names by start time; a
    process that holds a named pid but started at another time (a pid reused since) lives."""
    doomed, _ = workloads.start("memhold.py", "4")
    bystander, report = workloads.start("memhold.py", "4")
    daemon.stop()
    holds = daemon.state_dir / "holds"
    HoldJournal(holds).write("op-restore", HoldRecord(
        [(doomed, psutil.Process(doomed).create_time()), (bystander, psutil.Process(bystander).create_time() - 5)],
        [], action=KILL, names={doomed: "python3", bystander: "python3"}))
    daemon.start()
    wait_for(lambda: gone(doomed), 10, "the recorded process to be killed")
    assert ask(bystander, report)[0] == str(bystander)
    assert not list(holds.iterdir())
    with daemon.client() as c:
        assert c.status().recovered_operations == 1


def test_stopped_process_stays_stopped_through_rollback_and_restore(daemon: Daemon, workloads: Workloads) -> None:
    """A task stopped (SIGSTOP) before its checkpoint stays stopped: after a rolled-back
    checkpoint (cancelled during the dump), and after a restore of its snapshot."""
    pid, report = workloads.start("memhold.py", "1024")
    _, digest, _ = report.read_text().split()
    os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: _state(pid) == psutil.STATUS_STOPPED, 10, "the target to stop")
    checkpoint = BackgroundCheckpoint(daemon.target, pid, pb.PHASE_DUMP)
    checkpoint.wait_for_phase()
    with daemon.client() as c:
        assert c.cancel(checkpoint.operation_id).cancelled
    checkpoint.join()
    assert checkpoint.error is not None and checkpoint.error.error_class == "Cancelled"
    wait_for(lambda: _state(pid) == psutil.STATUS_STOPPED, 10, "the rolled-back target to be stopped")
    with daemon.client() as c:
        snap = c.checkpoint(pid)
        wait_for(lambda: gone(pid), 10, "the source to go")
        c.restore(snap.id)
    wait_for(lambda: _state(pid) == psutil.STATUS_STOPPED, 10, "the restored task to be stopped")
    os.kill(pid, signal.SIGCONT)
    assert ask(pid, report)[1] == digest
