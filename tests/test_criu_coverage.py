"""CRIU coverage in the zdtm style (issue #23, item 6): a tree that owns its controlling
terminal, and a file unlinked while open (--link-remap), through the daemon with real CRIU."""

from __future__ import annotations

from pathlib import Path

from harness import Workloads, ask, gone, wait_for
from snapd_client import SnapdClient
from snapd_daemon.host.terminals import Terminal


def test_tree_owning_its_pty_is_checkpointed_and_restored(client: SnapdClient, workloads: Workloads) -> None:
    """zdtm pty00: a session leader opened a pty, keeps both ends and made the slave its
    controlling terminal, a child shares it. The tree is checkpointed (no refusal), and
    after the restore the line left unread in the slave's input queue is still there, a
    line goes each way between master and slave, and the slave is still the session's
    controlling terminal with the leader's group in the foreground."""
    pid, report = workloads.start("ownpty.py")
    _, child, tty, *_ = report.read_text().split()
    snap = client.checkpoint(pid)
    assert sorted(p.pid for p in snap.processes) == sorted([pid, int(child)])
    wait_for(lambda: gone(pid) and gone(int(child)), 10, "the tree to stop")

    result = client.restore(snap.id)
    assert sorted(result.pids) == sorted([pid, int(child)])
    fields = ask(pid, report)
    assert fields == [str(pid), child, tty, "queued-before-checkpoint", "ok", "ok", "1"], fields
    assert ask(pid, report)[4:] == ["ok", "ok", "2"]


def test_tree_holding_the_master_of_a_childs_terminal_is_checkpointed(client: SnapdClient,
                                                                       workloads: Workloads) -> None:
    """The pty master in the root, a child leading its own session on the slave (a terminal
    emulator's shape): both ends are in the tree, so the whole tree is checkpointed and
    restored with the child's terminal; the child alone is refused (test_refusals)."""
    parent, report = workloads.start("tty.py")
    _, leader, grandchild, tty = report.read_text().split()
    snap = client.checkpoint(parent)
    members = sorted([parent, int(leader), int(grandchild)])
    assert sorted(p.pid for p in snap.processes) == members
    wait_for(lambda: all(gone(p) for p in members), 10, "the tree to stop")
    result = client.restore(snap.id)
    assert sorted(result.pids) == members
    stat = Path(f"/proc/{leader}/stat").read_text().rsplit(")", 1)[1].split()
    assert int(stat[3]) == int(leader), "the child no longer leads its session"
    assert Terminal(int(stat[4])).name == tty, "the child lost its controlling terminal"
