"""Checkpoint and restore real processes through the daemon with real CRIU."""

from __future__ import annotations

import os
import socket

from harness import Daemon, Workloads, ask, gone, wait_for
from snapd_client import SnapdClient


def test_256mb_of_random_bytes_survive(client: SnapdClient, workloads: Workloads) -> None:
    pid, report = workloads.start("memhold.py", "256")
    _, digest, _ = report.read_text().split()
    snap = client.checkpoint(pid, name="memhold", labels={"model": "test"})
    assert snap.raw_bytes > 256 << 20
    assert snap.processes[0].pid == pid and snap.labels["model"] == "test"
    wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")

    result = client.restore(snap.id)
    assert result.root_pid == pid and list(result.pids) == [pid]
    restored_pid, restored_digest, checks = ask(pid, report)
    assert (int(restored_pid), restored_digest, int(checks)) == (pid, digest, 2)


def test_threads_keep_running(client: SnapdClient, workloads: Workloads) -> None:
    pid, report = workloads.start("threads.py", "8")
    before = [int(x) for x in ask(pid, report)]
    snap = client.checkpoint(pid)
    assert snap.processes[0].threads == 9
    wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
    client.restore(snap.id)
    first = [int(x) for x in ask(pid, report)]
    wait_for(lambda: [int(x) for x in ask(pid, report)][2:] > first[2:], 10, "counters to advance")
    after = [int(x) for x in ask(pid, report)]
    assert after[1] == 9
    assert all(a > b for a, b in zip(after[2:], before[2:], strict=True))


def test_parent_and_child_restore_together(client: SnapdClient, workloads: Workloads, tmp_path) -> None:
    pid, report = workloads.start("forker.py")
    child_report = report.with_name(report.name + ".child")
    wait_for(child_report.exists, 10, "the child to report")
    child_pid = int(child_report.read_text().split()[0])
    snap = client.checkpoint(pid)
    assert sorted(p.pid for p in snap.processes) == sorted([pid, child_pid])
    wait_for(lambda: gone(pid) and gone(child_pid), 10, "both processes to stop")

    result = client.restore(snap.id)
    assert sorted(result.pids) == sorted([pid, child_pid])
    assert ask(pid, report)[0] == str(pid)
    c_pid, c_ppid, _ = ask(child_pid, child_report)
    assert (int(c_pid), int(c_ppid)) == (child_pid, pid)


def test_listening_socket_answers_after_restore(client: SnapdClient, workloads: Workloads) -> None:
    pid, report = workloads.start("tcpserver.py")
    port = int(report.read_text().split()[1])
    assert _ping(port) == "pong 1"
    snap = client.checkpoint(pid)
    wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
    client.restore(snap.id)
    assert _ping(port) == "pong 2"


def test_leave_running_then_restore_after_original_exits(client: SnapdClient, workloads: Workloads) -> None:
    pid, report = workloads.start("memhold.py", "16")
    _, digest, _ = report.read_text().split()
    snap = client.checkpoint(pid, leave_running=True)
    assert snap.leave_running
    assert ask(pid, report)[1] == digest  # the original still serves
    workloads.kill_all()
    result = client.restore(snap.id, wait_for_exit_seconds=10)
    assert result.root_pid == pid
    assert ask(pid, report)[1] == digest


def test_process_outside_its_session_leader(client: SnapdClient, workloads: Workloads) -> None:
    pid, report = workloads.start("memhold.py", "8", under_shell=True)
    _, digest, _ = report.read_text().split()
    snap = client.checkpoint(pid)
    wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
    client.restore(snap.id)
    assert ask(pid, report)[1] == digest


def test_restore_by_name_takes_newest_and_rm(client: SnapdClient, workloads: Workloads) -> None:
    pid, report = workloads.start("memhold.py", "8")
    first = client.checkpoint(pid, name="svc", leave_running=True)
    ask(pid, report)  # state changes: the check counter is now 2
    second = client.checkpoint(pid, name="svc")
    assert [s.id for s in client.list("svc").snapshots] == [first.id, second.id]
    wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
    assert client.restore("svc").snapshot_id == second.id
    assert ask(pid, report)[2] == "3"
    # the two snapshots share most chunks: deleting one frees only what it alone used
    assert second.new_bytes < second.stored_bytes
    assert client.delete(second.id, force=True).freed_bytes == second.new_bytes  # its restored copy runs on
    assert [s.id for s in client.list().snapshots] == [first.id]
    assert 0 < client.delete(first.id).freed_bytes <= first.stored_bytes
    assert client.list().store_disk_bytes == 0


def test_snapshots_survive_daemon_restart(daemon: Daemon, workloads: Workloads) -> None:
    pid, report = workloads.start("memhold.py", "8")
    _, digest, _ = report.read_text().split()
    with daemon.client() as c:
        snap = c.checkpoint(pid, name="persist")
    assert daemon.stop() == 0
    daemon.start()
    with daemon.client() as c:
        assert [s.id for s in c.list().snapshots] == [snap.id]
        c.restore("persist")
    assert ask(pid, report)[1] == digest


def _ping(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        return s.makefile().readline().strip()


def test_host_criu_plugins_are_not_loaded(tmp_path, workloads: Workloads, monkeypatch) -> None:
    """CRIU would load every *.so of its plugin directory (the host's cuda_plugin.so among
    them) and fail on one that is not a plugin; snapd points CRIU at a directory without any."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "broken_plugin.so").write_bytes(b"not an ELF file")
    monkeypatch.setenv("CRIU_LIBS_DIR", str(plugins))  # where CRIU looks when not told otherwise
    d = Daemon(tmp_path / "d")
    d.root.mkdir()
    d.start()
    try:
        pid, report = workloads.start("memhold.py", "8")
        _, digest, _ = report.read_text().split()
        with d.client() as c:
            snap = c.checkpoint(pid)
            wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
            c.restore(snap.id)
        assert ask(pid, report)[1] == digest
    finally:
        d.stop()


def _stat(pid: int) -> tuple[str, int]:
    """(state, ppid) from /proc/PID/stat."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def test_zombie_child_is_checkpointed_and_restored(client: SnapdClient, workloads: Workloads) -> None:
    pid, report = workloads.start("zombie.py")
    zombie = int(report.read_text().split()[1])
    assert _stat(zombie) == ("Z", pid)
    snap = client.checkpoint(pid)
    assert sorted(p.pid for p in snap.processes) == sorted([pid, zombie])
    wait_for(lambda: gone(pid) and not os.path.exists(f"/proc/{zombie}"), 10, "the tree and its zombie to go")

    result = client.restore(snap.id)
    assert sorted(result.pids) == sorted([pid, zombie])
    assert ask(pid, report)[:2] == [str(pid), str(zombie)]
    assert _stat(zombie) == ("Z", pid)


def test_tree_whose_threads_and_children_come_and_go(client: SnapdClient, workloads: Workloads) -> None:
    pid, report = workloads.start("zombie.py", "churn")
    zombie = int(report.read_text().split()[1])
    for _ in range(4):
        snap = client.checkpoint(pid, leave_running=True)
        assert {pid, zombie} <= {p.pid for p in snap.processes}
    client.checkpoint(pid)
    wait_for(lambda: gone(pid) and not os.path.exists(f"/proc/{zombie}"), 10, "the tree and its zombie to go")
    client.restore(snap.id)
    ticks = int(ask(pid, report)[2])
    wait_for(lambda: int(ask(pid, report)[2]) > ticks, 10, "the restored tree to run")
    assert _stat(zombie) == ("Z", pid)
