"""Issue #24, instances: every successful restore is an instance the daemon keeps, watches
(pidfd, the daemon as child subreaper), stops, lists, re-adopts after a restart and reports
as events; real processes, real CRIU, a real daemon killed with SIGKILL."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import psutil
import pytest

from faultlib import biggest_chunk, damage_chunk
from harness import Daemon, Workloads, error_of, gone, snapd, start_piped, wait_for
from snapd.v1 import snapd_pb2 as pb
from snapd_client import SnapdClient
from snapd_client.client import state_name
from snapd_client.errors import SnapdClientError
from snapd_daemon.api.service import MAX_WATCHERS
from snapd_daemon.errors import EventsExpired
from snapd_daemon.host.processes import PidState, pid_state
from snapd_daemon.runtime.events import EventBus

PS_KEYS = {"id", "snapshot", "name", "state", "root_pid", "pids", "gpus", "cgroup", "ports", "created", "ready",
           "ended", "exit_status", "sandbox", "ready_seconds"}


def _restored(client: SnapdClient, workloads: Workloads, name: str, *args: str) -> pb.RestoreResult:
    """A workload checkpointed (stopped) and restored with its own pids."""
    pid, _ = workloads.start(*args)
    snap = client.checkpoint(pid, name=name)
    wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
    return client.restore(snap.id)


def _state(client: SnapdClient, instance: str) -> str:
    return state_name(client.instance(instance).state)


def _ps(daemon: Daemon, *args: str) -> list[dict]:
    listed = snapd(daemon, "ps", "--json", *args)
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)["instances"]


def test_instance_listed_logged_stopped_and_its_pids_freed(daemon: Daemon, client: SnapdClient, tmp_path: Path,
                                                            workloads: Workloads) -> None:
    pid, _ = start_piped(tmp_path)
    snap = client.checkpoint(pid, name="ticker")
    wait_for(lambda: gone(pid), 10, "the checkpointed ticker to stop")
    result = client.restore(snap.id)
    assert result.instance_id.startswith("in-")

    (listed,) = _ps(daemon)
    assert set(listed) == PS_KEYS
    assert listed["id"] == result.instance_id and listed["snapshot"] == snap.id and listed["name"] == "ticker"
    assert listed["state"] == "running" and listed["root_pid"] == pid and listed["pids"] == [pid]
    assert listed["gpus"] == [] and listed["ports"] == [] and listed["exit_status"] is None
    assert listed["created"] and listed["ready"] and listed["ended"] is None
    assert result.instance_id in snapd(daemon, "ps").stdout

    short = result.instance_id.removeprefix("in-")[:5]  # a unique start, "in-" left out
    wait_for(lambda: f"{pid} tick" in snapd(daemon, "logs", short).stdout, 10, "ticks in `snapd logs`")
    follower = subprocess.Popen([sys.executable, "-m", "snapd_client", "--target", daemon.target, "logs", "-f", short],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    stopped = snapd(daemon, "stop", short, "--time", "5", "--json")
    assert stopped.returncode == 0, stopped.stderr
    shown = json.loads(stopped.stdout)
    assert shown["state"] == "stopped" and shown["exit_status"] == {"known": True, "code": None, "signal": "SIGTERM"}
    assert pid_state(pid) is PidState.FREE  # reaped by the daemon, which kept its status
    out, _ = follower.communicate(timeout=30)  # `logs -f` ends with the instance
    assert follower.returncode == 0 and f"{pid} tick" in out
    assert _ps(daemon) == [] and [i["state"] for i in _ps(daemon, "-a")] == ["stopped"]
    again = client.stop_instance(result.instance_id)  # stopping an ended instance changes nothing
    assert state_name(again.state) == "stopped"

    missing = snapd(daemon, "stop", "in-000000000000")
    assert missing.returncode == 70 and "not found" in missing.stderr


def test_tree_killed_after_restore_is_reaped_at_once(daemon: Daemon, client: SnapdClient, tmp_path: Path,
                                                     workloads: Workloads) -> None:
    """The daemon, child subreaper of what it restores, reaps a tree killed from outside
    as it ends, and keeps its status: no zombie holds the pid. Orphans that are no instance
    (what a hook left running) are reaped too."""
    pid, _ = workloads.start("ticker.py")
    snap = client.checkpoint(pid)
    wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
    left = tmp_path / "left-behind"  # a hook's background process: an orphan, not an instance
    result = client.restore(snap.id, post_restore_hook=["sh", "-c", f"sleep 0.5 >/dev/null 2>&1 & echo $! > {left}"])
    orphan = int(left.read_text())
    wait_for(lambda: pid_state(orphan) is PidState.FREE, 10, "the hook's orphan to be reaped")
    root = result.root_pid
    psutil.Process(root).send_signal(signal.SIGKILL)
    wait_for(lambda: _state(client, result.instance_id) == "exited", 10, "the instance to be exited")
    ended = client.instance(result.instance_id)
    assert ended.exit_status.known and ended.exit_status.signal == signal.SIGKILL
    assert pid_state(root) is PidState.FREE  # reaped before the state changed


def test_restore_failing_after_criu_leaves_an_exited_instance_and_no_zombie(
        daemon: Daemon, client: SnapdClient, workloads: Workloads) -> None:
    """A corrupt chunk found while injecting: the tree CRIU made is killed and reaped at once;
    its instance says why."""
    pid, _ = workloads.start("memhold.py", "64")
    snap = client.checkpoint(pid)
    wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
    damage_chunk(biggest_chunk(daemon.state_dir), "flip")
    err = error_of(lambda: client.restore(snap.id))
    assert err.error_class == "ChunkCorrupt"
    assert pid_state(pid) is PidState.FREE  # no zombie: a restore right away may take the pid
    (failed,) = client.instances(all=True).instances
    assert state_name(failed.state) == "exited" and failed.exit_status.signal == signal.SIGKILL
    assert "its restore failed" in failed.detail and "chunk" in failed.detail
    assert list(client.instances().instances) == []


def test_three_instances_readopted_after_daemon_sigkill(tmp_path: Path, workloads: Workloads) -> None:
    daemon = Daemon(tmp_path).start()
    try:
        with daemon.client() as c:
            made = [_restored(c, workloads, f"w{i}", "ticker.py") for i in range(3)]
        daemon.stop(signal.SIGKILL)
        killed = made[1].root_pid
        psutil.Process(killed).kill()
        wait_for(lambda: gone(killed), 10, "the instance killed while no daemon ran to end")
        daemon.start()
        with daemon.client() as c:
            states = {i.id: i for i in c.instances(all=True).instances}
            assert sorted(states) == sorted(r.instance_id for r in made)
            assert [state_name(states[r.instance_id].state) for r in made] == ["running", "exited", "running"]
            lost = states[made[1].instance_id]
            assert not lost.exit_status.known and "no daemon ran" in lost.detail
            # a re-adopted tree is watched again: its end is seen, and stop frees its pids
            psutil.Process(made[0].root_pid).kill()
            wait_for(lambda: _state(c, made[0].instance_id) == "exited", 10, "the re-adopted tree's end")
            stopped = c.stop_instance(made[2].instance_id, grace_seconds=0)
            assert state_name(stopped.state) == "stopped" and not stopped.exit_status.known
            assert pid_state(made[2].root_pid) is PidState.FREE
    finally:
        daemon.close()


def test_event_streams_are_bounded_so_every_other_call_is_still_served(daemon: Daemon, client: SnapdClient,
                                                                       workloads: Workloads) -> None:
    """Each open WatchEvents stream holds one of the daemon's RPC threads: past MAX_WATCHERS a new
    one is refused (WatchersBusy, 76) while every other call is served, and a stream closed
    frees its place."""
    pid, _ = workloads.start("ticker.py")
    client.checkpoint(pid, leave_running=True)  # events after 1, for each stream to read at once
    streams = [client.events(1) for _ in range(MAX_WATCHERS)]
    try:
        assert [next(s).sequence for s in streams] == [2] * MAX_WATCHERS  # each one open and served
        busy = error_of(lambda: next(client.events(1)))
        assert (busy.error_class, busy.exit_code) == ("WatchersBusy", 76)
        assert f"{MAX_WATCHERS} event streams (WatchEvents) are open" in busy.message
        client.checkpoint(pid, leave_running=True)
        assert client.status().snapshots == 2

        def another() -> bool:  # the daemon ends a closed stream within a second
            try:
                extra = client.events(1)
                opened = next(extra).sequence == 2
                extra.close()
                return opened
            except SnapdClientError as exc:
                assert exc.error_class == "WatchersBusy", exc.message
                return False

        streams.pop().close()
        wait_for(another, 30, "a stream closed to free its place", interval=0.2)
    finally:
        for s in streams:
            s.close()


def test_watch_events_in_order_and_resumed(daemon: Daemon, client: SnapdClient, workloads: Workloads) -> None:
    pid, _ = workloads.start("ticker.py")
    snap = client.checkpoint(pid)
    wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
    seen: list[pb.Event] = []

    def watch() -> None:  # from the daemon's first event on (the checkpoint's): no race with the restore
        with daemon.client() as w:
            for ev in w.events(1):
                seen.append(ev)
                if ev.HasField("operation") and ev.operation.kind == "restore" and ev.operation.state == "succeeded":
                    return

    thread = threading.Thread(target=watch)
    thread.start()
    result = client.restore(snap.id)
    thread.join(30)
    assert not thread.is_alive()
    restore = [e for e in seen if e.HasField("instance") or e.operation.kind == "restore"]
    steps = [(e.operation.state, e.operation.progress.phase if e.operation.state == "progress" else 0)
             if e.HasField("operation") else ("instance", e.instance.state) for e in restore]
    assert steps[0] == ("started", 0) and steps[-1] == ("succeeded", 0)
    starting = steps.index(("instance", pb.INSTANCE_STATE_STARTING))
    running = steps.index(("instance", pb.INSTANCE_STATE_RUNNING))
    phases = [phase for state, phase in steps if state == "progress"]
    assert pb.PHASE_PREPARE in phases and pb.PHASE_RESTORE in phases
    assert steps.index(("progress", pb.PHASE_RESTORE)) < starting < running < len(steps) - 1
    assert all(e.instance.id == result.instance_id for e in restore if e.HasField("instance"))
    sequences = [e.sequence for e in seen]
    assert sequences == list(range(sequences[0], sequences[0] + len(seen)))  # no gap, increasing

    cursor = restore[0]
    resumed = []
    for ev in client.events(cursor.sequence, cursor.stream_id):
        resumed.append(ev)
        if ev.sequence == seen[-1].sequence:
            break
    assert resumed == seen[seen.index(cursor) + 1:]
    stale = error_of(lambda: next(client.events(cursor.sequence, "ev-000000000000")))
    assert stale.error_class == "EventsExpired" and stale.exit_code == 74 and "restarted" in stale.message
    ahead = error_of(lambda: next(client.events(seen[-1].sequence + 1000)))
    assert ahead.error_class == "EventsExpired"
    for fmt in (("--json",), ()):  # the CLI follows the same stream
        follower = subprocess.Popen([sys.executable, "-m", "snapd_client", "--target", daemon.target, "events", *fmt,
                                     "--after", str(cursor.sequence), "--stream-id", cursor.stream_id],
                                    stdout=subprocess.PIPE, text=True)
        assert follower.stdout is not None
        line = follower.stdout.readline()
        follower.terminate()
        follower.wait()
        after = seen[seen.index(cursor) + 1]
        if fmt:
            assert json.loads(line)["sequence"] == after.sequence
        else:
            assert line.split()[0] == str(after.sequence)


def test_retention_metrics_and_rm_refused_while_instances_run(tmp_path: Path, workloads: Workloads) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    daemon = Daemon(tmp_path, ("--keep-exited-instances", "1", "--metrics-address", f"127.0.0.1:{port}")).start()
    try:
        with daemon.client() as c:
            first, second = (_restored(c, workloads, f"r{i}", "ticker.py") for i in range(2))
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            assert 'snapd_instances{state="running"} 2.0' in metrics
            assert "snapd_restore_to_ready_seconds_count 2.0" in metrics
            figures = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
                       if line.startswith("snapd_store_")}
            assert figures["snapd_store_chunks"] > 0 and figures["snapd_store_bytes"] > 0
            assert figures["snapd_store_quarantined_chunks"] == 0
            refused = snapd(daemon, "rm", first.snapshot_id)
            assert refused.returncode == 72 and first.instance_id in refused.stderr and "--force" in refused.stderr
            assert c.get(first.snapshot_id).id == first.snapshot_id
            for r in (first, second):
                c.stop_instance(r.instance_id, grace_seconds=0)
            assert [i.id for i in c.instances(all=True).instances] == [second.instance_id]  # the newest kept
            assert snapd(daemon, "rm", first.snapshot_id).returncode == 0
            third = _restored(c, workloads, "r3", "ticker.py")
            forced = snapd(daemon, "rm", third.snapshot_id, "--force")
            assert forced.returncode == 0 and _state(c, third.instance_id) == "running"
            c.stop_instance(third.instance_id, grace_seconds=0)
        daemon.stop()
        daemon.extra_args = ("--exited-instance-max-hours", "0")
        daemon.start()
        with daemon.client() as c:
            assert list(c.instances(all=True).instances) == []
    finally:
        daemon.close()


def test_event_cursor_older_than_the_ring_is_refused() -> None:
    bus = EventBus(ring_size=4)
    for n in range(10):
        bus.publish(n)
    held = bus.follow(6, bus.stream_id, lambda: False)
    assert [e.payload for e in held] == [6, 7, 8, 9]  # events 7-10 are held
    with pytest.raises(EventsExpired, match="holds events 7-10 only"):
        next(bus.follow(5, bus.stream_id, lambda: True))
