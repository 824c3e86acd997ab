"""Bad input gets a specific error and a proper gRPC status; the daemon stays up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import psutil
import pytest

from harness import BackgroundCheckpoint, Daemon, Workloads, ask, error_of, gone, wait_for
from snapd.v1 import snapd_pb2 as pb
from snapd_client import SnapdClient


def test_pid_that_does_not_exist(client: SnapdClient) -> None:
    pid = 4_000_000
    assert not Path(f"/proc/{pid}").exists()
    err = error_of(lambda: client.checkpoint(pid))
    assert err.code == grpc.StatusCode.NOT_FOUND and err.error_class == "ProcessNotFound"
    assert f"pid {pid}: no such process" in err.message and err.exit_code == 11


@pytest.mark.parametrize("pid", [0, -5, 2**31 - 1])
def test_pid_out_of_range(client: SnapdClient, pid: int) -> None:
    err = error_of(lambda: client.checkpoint(pid))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"invalid pid: {pid} is " in err.message and "4194304" in err.message, err.message


def test_pid_1_daemon_and_ancestors(client: SnapdClient, daemon: Daemon) -> None:
    assert daemon.proc is not None
    cases = {
        1: "init process",
        daemon.proc.pid: "the snapd daemon itself",
        os.getpid(): "ancestor of the snapd daemon",
    }
    for pid, reason in cases.items():
        err = error_of(lambda pid=pid: client.checkpoint(pid))
        assert err.code == grpc.StatusCode.FAILED_PRECONDITION, pid
        assert err.error_class == "ProcessProtected" and reason in err.message


def test_kernel_thread(client: SnapdClient) -> None:
    kthreadd = Path("/proc/2/comm")
    if not kthreadd.exists() or kthreadd.read_text().strip() != "kthreadd":
        pytest.skip("no kthreadd visible at pid 2 in this pid namespace")
    err = error_of(lambda: client.checkpoint(2))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION and "kernel thread" in err.message


@pytest.mark.parametrize(
    ("name", "labels", "field"),
    [
        ("x" * 129, {}, "name"),
        ("bad name!", {}, "name"),
        ("../etc", {}, "name"),
        ("ok", {"bad key": "v"}, "labels"),
        ("ok", {"k": "v" * 300}, "labels"),
        ("ok", {f"k{i}": "v" for i in range(40)}, "labels"),
    ],
)
def test_malformed_checkpoint_requests(client: SnapdClient, workloads: Workloads, name, labels, field) -> None:
    pid, _ = workloads.start("memhold.py", "1")
    err = error_of(lambda: client.checkpoint(pid, name=name, labels=labels))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.message.startswith(f"invalid {field}:")
    assert not gone(pid)


@pytest.mark.parametrize("ref", ["", "a/b", "..", "x" * 300])
def test_malformed_snapshot_refs(client: SnapdClient, ref: str) -> None:
    for call in (client.restore, client.get, client.delete):
        err = error_of(lambda call=call: call(ref))
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT and "invalid snapshot" in err.message


def test_unknown_snapshot(client: SnapdClient) -> None:
    for call in (client.restore, client.get, client.delete):
        err = error_of(lambda call=call: call("no-such-snapshot"))
        assert err.code == grpc.StatusCode.NOT_FOUND and err.exit_code == 14
        assert "'no-such-snapshot' not found" in err.message


def test_restore_while_original_alive(client: SnapdClient, workloads: Workloads) -> None:
    pid, _ = workloads.start("memhold.py", "4")
    snap = client.checkpoint(pid, leave_running=True)
    err = error_of(lambda: client.restore(snap.id))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION and err.error_class == "PidsInUse"
    assert f"pid {pid} (python" in err.message and "of the snapshot is alive" in err.message
    assert not gone(pid)


# holds one CPU at real-time priority for a while: what runs only there cannot run meanwhile
_SPINNER = """
import os, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
print("spinning", flush=True)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    pass
"""


def test_restore_waits_for_an_original_killed_but_not_run_since(client: SnapdClient, workloads: Workloads) -> None:
    """A scheduler kills the original and restores at once, before the original ran again
    (here its CPU is held by a real-time spinner): with its SIGKILL pending it is on its
    way out, so the restore waits for its pid instead of refusing it as alive."""
    pid, report = workloads.start("memhold.py", "16")
    digest = report.read_text().split()[1]
    snap = client.checkpoint(pid, leave_running=True)
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(pid, {cpu})
    spinner = subprocess.Popen([sys.executable, "-c", _SPINNER, str(cpu), "1.5"], stdout=subprocess.PIPE, text=True)
    try:
        assert spinner.stdout is not None and spinner.stdout.readline() == "spinning\n"
        os.kill(pid, signal.SIGKILL)
        result = client.restore(snap.id, wait_for_exit_seconds=10)
    finally:
        spinner.kill()
        spinner.wait()
    assert result.root_pid == pid and ask(pid, report)[1] == digest


def test_second_checkpoint_of_same_pid_is_refused(client: SnapdClient, daemon: Daemon,
                                                   workloads: Workloads) -> None:
    pid, _ = workloads.start("memhold.py", "768")
    first = BackgroundCheckpoint(daemon.target, pid, pb.PHASE_DUMP, leave_running=True)
    first.wait_for_phase()
    err = error_of(lambda: client.checkpoint(pid))
    first.join()
    assert err.code == grpc.StatusCode.ABORTED and err.error_class == "ProcessBusy"
    assert f"pid {pid} is already part of running operation op-" in err.message
    assert first.snapshot is not None and not gone(pid)


def test_daemon_survives_bad_requests(client: SnapdClient, daemon: Daemon) -> None:
    for pid in (0, 1, 4_000_000):
        error_of(lambda pid=pid: client.checkpoint(pid))
    assert daemon.proc is not None and daemon.proc.poll() is None
    assert client.status().pid == daemon.proc.pid


def test_cannot_start_second_daemon_on_same_state_dir(daemon: Daemon, tmp_path: Path) -> None:
    other = Daemon(tmp_path / "second")
    other.state_dir = daemon.state_dir
    other.root.mkdir()
    with pytest.raises(RuntimeError, match="in use by another snapd daemon"):
        other.start()
    wait_for(lambda: other.proc is not None and other.proc.poll() == 19, 10, "exit code 19")


_SESSION_OUTSIDE = """
import subprocess, sys
from snapd_daemon.errors import ProcessProtected
from snapd_daemon.host.processes import inspect_tree
child = subprocess.Popen(["sleep", "300"])
try:
    inspect_tree(child.pid)
except ProcessProtected as exc:
    print(exc)
finally:
    child.kill()
"""


def test_session_leader_outside_the_pid_namespace() -> None:
    # unshare is the session leader; its forked child is init of a new pid namespace that
    # cannot see it, so every process started there has a session id of 0
    out = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", _SESSION_OUTSIDE],
                         start_new_session=True, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "cannot be checkpointed" in out.stdout and "session id reads 0" in out.stdout
    assert "start the workload in its own session" in out.stdout


def test_process_in_another_pid_namespace(client: SnapdClient, tmp_path: Path) -> None:
    proc = subprocess.Popen(["unshare", "--pid", "--fork", "sleep", "300"], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: psutil.Process(proc.pid).children(), 10, "the namespaced child")
        inner = psutil.Process(proc.pid).children()[0].pid
        for pid in (inner, proc.pid):  # the namespace's init (its session outside), and a tree holding it
            err = error_of(lambda pid=pid: client.checkpoint(pid))
            assert err.error_class == "ProcessProtected" and f"pid {inner} of its tree" in err.message
        assert "snapd run" in error_of(lambda: client.checkpoint(inner)).message
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_terminal_outside_the_tree_is_refused_before_anything_is_frozen(client: SnapdClient,
                                                                          workloads: Workloads) -> None:
    """A session leader whose pty master its parent holds: a restore could never give the
    tree its terminal back. Refused, the terminal named as outside the tree, with the fix;
    nothing frozen, no snapshot."""
    parent, report = workloads.start("tty.py")
    _, leader, grandchild, tty = report.read_text().split()
    err = error_of(lambda: client.checkpoint(int(leader)))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION and err.error_class == "ProcessProtected"
    assert err.exit_code == 12
    assert (f"pid {leader} of its tree has a controlling terminal ({tty}) that the tree does not own (its other "
            "end (the pty master) is held outside the tree)") in err.message
    assert "setsid -f CMD </dev/null >LOG 2>&1" in err.message and "systemd-run" in err.message
    for member in (parent, int(leader), int(grandchild)):
        assert psutil.Process(member).status() in (psutil.STATUS_SLEEPING, psutil.STATUS_RUNNING)
    assert list(client.list().snapshots) == []


def test_oversized_hook_argv_is_invalid(client: SnapdClient, workloads: Workloads) -> None:
    pid, _ = workloads.start("memhold.py", "1")
    err = error_of(lambda: client.checkpoint(pid, pre_checkpoint_hook=["true", "x" * (3 << 20)]))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.error_class == "InvalidRequest"
    assert f"argv is {(3 << 20) + 4} bytes, at most 32768 allowed" in err.message
    assert not gone(pid)


def test_long_failure_message_is_cut_not_lost(client: SnapdClient, workloads: Workloads) -> None:
    """A hook whose output is huge fails with HookFailed, its message cut to a bounded size."""
    pid, _ = workloads.start("memhold.py", "1")
    noisy = [sys.executable, "-c", "import sys; sys.stderr.write('e' * 100000); sys.exit(3)"]
    err = error_of(lambda: client.checkpoint(pid, pre_checkpoint_hook=noisy))
    assert err.error_class == "HookFailed" and err.exit_code == 29
    assert "failed: exit status 3" in err.message and "more characters cut)" in err.message
    assert len(err.message) < 2100
    assert not gone(pid)


@pytest.mark.parametrize(("method", "raw"), [
    ("Checkpoint", b"\xff\xff\xff"),  # not protobuf wire format
    ("Checkpoint", b"\x12\x02\xff\xfe"),  # name (field 2) not UTF-8
    ("GetSnapshot", b"\x0a\x02\xff\xfe"),  # snapshot (field 1) not UTF-8
])
def test_undecodable_request_is_invalid_argument(daemon: Daemon, method: str, raw: bytes) -> None:
    with grpc.insecure_channel(daemon.target) as ch:
        with pytest.raises(grpc.RpcError) as info:
            if method == "Checkpoint":
                list(ch.unary_stream(f"/snapd.v1.Snapshots/{method}")(raw, timeout=30))
            else:
                ch.unary_unary(f"/snapd.v1.Snapshots/{method}")(raw, timeout=30)
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    trailers = dict(err.trailing_metadata())
    assert trailers["snapd-error"] == "InvalidRequest" and trailers["snapd-exit-code"] == "10"
    assert f"not a valid {method} request" in err.details()
    assert daemon.proc is not None and daemon.proc.poll() is None


def test_nccl_ras_connection_is_refused_naming_the_variable(client: SnapdClient, workloads: Workloads) -> None:
    """A rank whose communicators are gone still holds its RAS thread's TCP connections:
    refused before anything is frozen, naming NCCL_RAS_ENABLE=0, instead of failing in CRIU."""
    pid, report = workloads.start("ras_like.py")
    _, local, peer = report.read_text().split()
    err = error_of(lambda: client.checkpoint(pid))
    assert err.error_class == "NcclActive" and err.exit_code == 62, err.message
    ends = (f"127.0.0.1:{local} -> 127.0.0.1:{peer}", f"127.0.0.1:{peer} -> 127.0.0.1:{local}")  # either side
    assert any(e in err.message for e in ends) and "NCCL_RAS_ENABLE=0" in err.message, err.message
    assert "--tcp-established" in err.message  # the other possible cause, and its fix
    assert psutil.Process(pid).status() in (psutil.STATUS_SLEEPING, psutil.STATUS_RUNNING)
    assert list(client.list().snapshots) == []
    # asked to dump established connections, the same tree is no longer refused for them
    snap = client.checkpoint(pid, tcp_established=True)
    assert snap.tcp_established
