"""CRIU coverage in the zdtm style (issue #23, item 6): a tree that owns its controlling
terminal, and a file unlinked while open (--link-remap), through the daemon with real CRIU."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from harness import BackgroundCheckpoint, Daemon, Workloads, ask, error_of, gone, snapd, wait_for
from snapd.v1 import snapd_pb2 as pb
from snapd_client import SnapdClient
from snapd_daemon.errors import LinkRemapMissing
from snapd_daemon.host import linkremap
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


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_unlinked_open_file_is_kept_with_link_remap(daemon: Daemon, client: SnapdClient, workloads: Workloads,
                                                    tmp_path: Path) -> None:
    """zdtm unlink_fstat03: a file opened, linked under a second name, its first name
    unlinked, written after that. Without --link-remap CRIU refuses it, and the error names
    snapd's flag. With it the snapshot records the flag and the link kept for it (shown by
    inspect); every restore reopens the very same inode with its bytes, size and offset;
    CRIU's own link_remap.N does not outlive a restore; a kept link removed by hand makes
    the restore refuse, naming it; rm removes the kept link."""
    folder = tmp_path / "files"
    folder.mkdir()
    pid, report = workloads.start("unlinked.py", str(folder), "1")
    before = report.read_text().split()
    inode = (folder / "data.link").stat().st_ino
    assert before[3:5] == ["3000", str(inode)]

    err = error_of(lambda: client.checkpoint(pid))
    assert err.error_class == "CriuFailed" and "checkpoint --link-remap" in err.message, err.message
    assert _names(folder) == ["data.link"]

    snap = client.checkpoint(pid, link_remap=True)
    assert snap.link_remap and len(snap.link_remap_files) == 1
    kept = Path(snap.link_remap_files[0])
    assert kept.parent == folder and kept.stat().st_ino == inode
    assert _names(folder) == sorted(["data.link", kept.name])
    shown = snapd(daemon, "inspect", snap.id)
    assert "link_remap=True" in shown.stdout and f"link remap:  {kept}" in shown.stdout, shown.stdout
    wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")

    for _ in range(2):  # restorable again and again: the kept link stays
        client.restore(snap.id)
        after = ask(pid, report)
        assert after[:5] == before[:5] and after[5] == "2", (before, after)
        assert _names(folder) == sorted(["data.link", kept.name])
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: gone(pid), 10, "the restored process to die")

    kept.unlink()  # an operator removed it: the snapshot cannot be restored, and says why
    err = error_of(lambda: client.restore(snap.id))
    assert err.error_class == "LinkRemapMissing" and err.exit_code == 46, err.message
    assert str(kept) in err.message and "it was removed" in err.message
    assert gone(pid) and _names(folder) == ["data.link"]
    client.delete(snap.id)
    assert _names(folder) == ["data.link"]


def test_cancelled_link_remap_checkpoint_leaves_no_link(daemon: Daemon, client: SnapdClient, workloads: Workloads,
                                                        tmp_path: Path) -> None:
    """A checkpoint with --link-remap cancelled while CRIU dumps rolls back: neither CRIU's
    link_remap.N nor snapd's kept link is left in the file's directory, the process runs on
    with its file as it was, and no snapshot is listed."""
    folder = tmp_path / "files"
    folder.mkdir()
    # 1 GiB, as test_cancel's dump: a 256 MiB dump could end before its first progress report
    pid, report = workloads.start("unlinked.py", str(folder), "1024")
    before = report.read_text().split()
    checkpoint = BackgroundCheckpoint(daemon.target, pid, pb.PHASE_DUMP, link_remap=True)
    checkpoint.wait_for_phase()
    assert client.cancel(checkpoint.operation_id).cancelled
    checkpoint.join()
    assert checkpoint.error is not None and checkpoint.error.error_class == "Cancelled", checkpoint.error
    assert '"checkpoint.post_dump"' in daemon.log.read_text(), "the dump did not reach its post-dump point"
    wait_for(lambda: client.status().operations_in_flight == 0, 60, "the checkpoint to roll back")
    assert list(client.list().snapshots) == []
    assert _names(folder) == ["data.link"]
    assert ask(pid, report)[:5] == before[:5]


def test_daemon_killed_after_the_link_was_kept_removes_it_at_restart(tmp_path: Path, workloads: Workloads) -> None:
    """The daemon SIGKILLed between keeping CRIU's link (post-dump) and publishing the
    snapshot: its next start removes the kept link (named in the hold record) and thaws
    the stopped tree; CRIU's own link_remap.N goes with CRIU's failed dump."""
    (tmp_path / "d").mkdir()
    daemon = Daemon(tmp_path / "d").start()
    folder = tmp_path / "files"
    folder.mkdir()
    pid, report = workloads.start("unlinked.py", str(folder), "256")
    before = report.read_text().split()
    try:
        checkpoint = BackgroundCheckpoint(daemon.target, pid, pb.PHASE_DUMP, link_remap=True)
        wait_for(lambda: any(p.name.startswith(".snapd-keep.") for p in folder.iterdir()), 120,
                 "the link to be kept", interval=0.002)
        daemon.stop(signal.SIGKILL)
        checkpoint.join()
        daemon.start()
        with daemon.client() as c:
            assert list(c.list().snapshots) == []
        wait_for(lambda: _names(folder) == ["data.link"], 30, f"only data.link in {_names(folder)}")
        assert ask(pid, report)[:5] == before[:5]
    finally:
        daemon.close()


def test_link_names_from_a_manifest_touch_only_links_of_their_form(tmp_path: Path) -> None:
    """A manifest names its kept links; one imported from elsewhere may name any path. Only
    names of the kept form (and CRIU's link_remap.N) are ever removed or linked from."""
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    kept = tmp_path / ".snapd-keep.op-0123456789ab.link_remap.17"
    kept.write_text("a kept link")
    linkremap.remove([str(victim), "relative/.snapd-keep.op-1.link_remap.2", str(kept)])
    assert victim.read_text() == "keep me" and not kept.exists()
    with pytest.raises(LinkRemapMissing, match="it is no link snapd kept"):
        linkremap.relink("snap", [str(victim)])
