"""Cancellation: before the commit point a cancelled call rolls back (the source keeps
running, nothing stored stays visible); after it, the operation completes. The same for
CancelOperation, a cancelled call, a deadline, and Ctrl-C in the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import psutil
import pytest

from harness import BackgroundCheckpoint, Daemon, Workloads, ask, gone, wait_for
from snapd.v1 import snapd_pb2 as pb
from snapd_client import SnapdClient, SnapdClientError


def _nothing_left(daemon: Daemon, client: SnapdClient) -> None:
    """No snapshot, no operation, no staging, no chunk (temporary or not) left."""
    wait_for(lambda: client.status().operations_in_flight == 0, 60, "the operation to end")
    assert list(client.list().snapshots) == []
    wait_for(lambda: daemon.staging_leftovers() == [], 10, "staging to be removed")
    assert [p for p in (daemon.state_dir / "chunks").rglob("*") if p.is_file()] == []


def _running(pid: int) -> bool:
    return psutil.Process(pid).status() in (psutil.STATUS_SLEEPING, psutil.STATUS_RUNNING)


def _mark(seconds: str) -> str:
    """A `sleep` argument unique to this test run (other runs on the host sleep too)."""
    return f"{seconds}{os.getpid()}"


def _hook_running(marker: str) -> bool:
    """True while a `sleep MARKER` hook runs."""
    return any(p.info["cmdline"] == ["sleep", marker] for p in psutil.process_iter(["cmdline"]))


def test_cancel_during_dump_rolls_back(daemon: Daemon, client: SnapdClient, workloads: Workloads) -> None:
    pid, report = workloads.start("memhold.py", "1024")
    _, digest, _ = report.read_text().split()
    checkpoint = BackgroundCheckpoint(daemon.target, pid, pb.PHASE_DUMP)
    checkpoint.wait_for_phase()
    answer = client.cancel(checkpoint.operation_id)
    assert answer.cancelled and "rolls back" in answer.detail
    checkpoint.join()
    err = checkpoint.error
    assert err is not None and err.code == grpc.StatusCode.CANCELLED and err.exit_code == 45
    assert err.error_class == "Cancelled" and checkpoint.operation_id in err.message
    assert "before its commit point (at the caller's request)" in err.message
    assert "the process tree was left running and nothing was stored" in err.message
    _nothing_left(daemon, client)
    assert _running(pid) and ask(pid, report)[1] == digest
    assert not client.cancel(checkpoint.operation_id).cancelled  # it has ended


def test_deadline_before_commit_rolls_back(daemon: Daemon, client: SnapdClient, workloads: Workloads) -> None:
    pid, report = workloads.start("memhold.py", "8")
    _, digest, _ = report.read_text().split()
    with SnapdClient(daemon.target, timeout=0.5) as hasty:
        with pytest.raises(SnapdClientError) as info:
            hasty.checkpoint(pid, pre_checkpoint_hook=["sleep", _mark("1.51")])
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(lambda: '"error": "Cancelled"' in daemon.log.read_text(), 60, "the checkpoint to roll back")
    assert "before its commit point (its deadline passed)" in daemon.log.read_text()
    _nothing_left(daemon, client)
    assert _running(pid) and ask(pid, report)[1] == digest


def test_cancel_after_commit_completes(daemon: Daemon, client: SnapdClient, workloads: Workloads) -> None:
    """A restore's commit point is the resume of the restored tree; its post-hook runs after it."""
    pid, report = workloads.start("memhold.py", "8")
    _, digest, _ = report.read_text().split()
    snap = client.checkpoint(pid)
    wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
    seen: list[str] = []
    outcome: list[object] = []
    restoring = threading.Thread(target=lambda: outcome.append(client.restore(
        snap.id, post_restore_hook=["sleep", _mark("1.52")], on_progress=lambda p: seen.append(p.operation_id))))
    restoring.start()
    wait_for(lambda: _hook_running(_mark("1.52")), 60, "the post-restore hook")
    answer = client.cancel(seen[-1])
    assert not answer.cancelled and "past its commit point and completes" in answer.detail
    restoring.join(60)
    assert outcome and outcome[0].root_pid == pid
    assert ask(pid, report)[1] == digest


def test_cancel_unknown_or_malformed_operation(client: SnapdClient) -> None:
    answer = client.cancel("op-000000000000")
    assert not answer.cancelled and "no operation op-000000000000 is running" in answer.detail
    with pytest.raises(SnapdClientError) as info:
        client.cancel("../x")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def _cli(daemon: Daemon, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "snapd_client", "--target", daemon.target, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_ctrl_c_before_commit_point(daemon: Daemon, client: SnapdClient, workloads: Workloads) -> None:
    pid, report = workloads.start("memhold.py", "8")
    cli = _cli(daemon, "checkpoint", str(pid), "--pre-hook", f"sleep {_mark('1.53')}")
    wait_for(lambda: _hook_running(_mark("1.53")), 60, "the pre-checkpoint hook")
    cli.send_signal(signal.SIGINT)
    out, err = cli.communicate(timeout=60)
    assert cli.returncode == 45, err
    assert "snapd: cancelling operation op-" in err and "rolls back" in err
    assert "snapd: cancelled: operation op-" in err and "nothing was stored" in err
    assert out == "" and "Aborted" not in err
    _nothing_left(daemon, client)
    assert _running(pid) and ask(pid, report)[0] == str(pid)


def test_ctrl_c_after_commit_point(daemon: Daemon, client: SnapdClient, workloads: Workloads) -> None:
    pid, report = workloads.start("memhold.py", "8")
    snap = client.checkpoint(pid)
    wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
    cli = _cli(daemon, "restore", snap.id, "--post-hook", f"sleep {_mark('1.54')}")
    wait_for(lambda: _hook_running(_mark("1.54")), 60, "the post-restore hook")
    cli.send_signal(signal.SIGINT)
    out, err = cli.communicate(timeout=60)
    assert cli.returncode == 0, err
    assert f"restored {snap.id} as pid {pid}" in out
    assert "past its commit point and completes" in err and "it completed" in err
    assert ask(pid, report)[0] == str(pid)


def test_second_ctrl_c_leaves_at_once(daemon: Daemon, client: SnapdClient, workloads: Workloads) -> None:
    pid, report = workloads.start("memhold.py", "8")
    cli = _cli(daemon, "checkpoint", str(pid), "--pre-hook", f"sleep {_mark('1.55')}")
    wait_for(lambda: _hook_running(_mark("1.55")), 60, "the pre-checkpoint hook")
    cli.send_signal(signal.SIGINT)
    wait_for(lambda: Path(f"/proc/{cli.pid}").exists() and _asked_cancel(daemon), 30, "the cancel to be asked")
    cli.send_signal(signal.SIGINT)
    _, err = cli.communicate(timeout=30)
    assert cli.returncode == 130, err
    assert "the daemon decides whether it rolls back or completes" in err
    _nothing_left(daemon, client)
    assert _running(pid) and ask(pid, report)[0] == str(pid)


def _asked_cancel(daemon: Daemon) -> bool:
    return '"event": "operation.cancel"' in daemon.log.read_text()


def test_sigterm_past_the_drain_timeout_cancels_and_rolls_back(tmp_path: Path, workloads: Workloads) -> None:
    """A daemon told to stop waits for running operations (--drain-timeout); past it, an
    operation before its commit point is cancelled and rolls back before the daemon exits."""
    daemon = Daemon(tmp_path, ("--drain-timeout", "0.5")).start()
    pid, report = workloads.start("memhold.py", "8")
    _, digest, _ = report.read_text().split()
    errors: list[SnapdClientError] = []

    def run() -> None:
        with daemon.client() as c:
            try:
                c.checkpoint(pid, pre_checkpoint_hook=["sleep", _mark("1.53")])
            except SnapdClientError as exc:
                errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    wait_for(lambda: _hook_running(_mark("1.53")), 60, "the pre-checkpoint hook")
    assert daemon.stop(signal.SIGTERM) == 0
    thread.join(60)
    assert errors and errors[0].error_class == "Cancelled", errors
    assert "drain timeout passed" in errors[0].message
    assert _running(pid) and ask(pid, report)[1] == digest
    daemon.start()
    with daemon.client() as c:
        _nothing_left(daemon, c)
    daemon.stop()
