"""Issue #24 item 2: readiness probes and verified answers. A checkpoint records a probe and
an answer check (the request sent to the live server); a restore waits for the probe,
verifies the answer, and fails all or nothing (the tree killed, the instance exited) when
either does not hold. Real servers (tests/workloads/answerer.py, whose answers depend on
files outside the snapshot), real CRIU, a real daemon; a `snapd run --netns` tree probed
at the URL it listens on inside its own network namespace."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil

from harness import WORKLOADS, Daemon, Workloads, error_of, gone, snapd, wait_for
from snapd.v1 import snapd_pb2 as pb
from snapd_client import AsyncSnapdClient, SnapdClient
from snapd_client.client import state_name

BODY = '{"prompt": [1, 2, 3]}'


def _answerer(workloads: Workloads, tmp_path: Path) -> tuple[int, str]:
    """The answerer, its files in ``tmp_path/answers``: (pid, http://127.0.0.1:PORT)."""
    files = tmp_path / "answers"
    files.mkdir(exist_ok=True)
    pid, report = workloads.start("answerer.py", str(files))
    return pid, f"http://127.0.0.1:{report.read_text().split()[1]}"


def _checkpointed(daemon: Daemon, pid: int, *options: str) -> str:
    """Checkpoint ``pid`` through the CLI with ``options``; the snapshot id, once the source is gone."""
    made = snapd(daemon, "--json", "checkpoint", str(pid), *options)
    assert made.returncode == 0, made.stderr
    wait_for(lambda: gone(pid), 10, "the checkpointed server to stop")
    return json.loads(made.stdout)["id"]


def _nothing_left(client: SnapdClient, daemon: Daemon, pid: int) -> pb.Instance:
    """The failed restore's instance (exited), its pid gone and no hold record left."""
    assert gone(pid)
    assert list(client.instances().instances) == []
    (failed,) = client.instances(all=True).instances
    assert state_name(failed.state) == "exited" and "its restore failed" in failed.detail
    assert list((daemon.state_dir / "holds").glob("*.json")) == []
    return failed


def test_restore_waits_for_ready_verifies_the_answer_and_events_come_in_order(
        daemon: Daemon, client: SnapdClient, tmp_path: Path, workloads: Workloads) -> None:
    pid, url = _answerer(workloads, tmp_path)
    snap = _checkpointed(daemon, pid, "--ready-http", f"{url}/health", "--verify-http", f"{url}/plain",
                         "--verify-body", BODY)
    shown = client.get(snap)
    assert shown.ready_probe == f"GET {url}/health -> 200" and f"POST {url}/plain" in shown.answer_check
    seen: list[pb.Event] = []

    def watch() -> None:
        with daemon.client() as w:
            for ev in w.events(1):
                seen.append(ev)
                if ev.HasField("operation") and ev.operation.kind == "restore" and ev.operation.state in ("succeeded", "failed"):
                    return

    watcher = threading.Thread(target=watch)
    watcher.start()
    restored = snapd(daemon, "restore", snap, "--verify")
    assert restored.returncode == 0, restored.stderr
    watcher.join(30)
    assert "ready in " in restored.stdout and "verified answer " in restored.stdout
    digest = restored.stdout.split("verified answer ")[1].split(",")[0]
    assert digest in shown.answer_check

    (inst,) = client.instances().instances
    assert state_name(inst.state) == "ready" and inst.ready_seconds > 0 and inst.HasField("ready")
    (listed,) = json.loads(snapd(daemon, "ps", "--json").stdout)["instances"]
    assert listed["state"] == "ready" and listed["ready_seconds"] == inst.ready_seconds
    assert "READY IN" in snapd(daemon, "ps").stdout

    steps = [("instance", e.instance.state) if e.HasField("instance") else
             (e.operation.state, e.operation.progress.phase) for e in seen
             if e.HasField("instance") or e.operation.kind == "restore"]
    assert steps[-1][0] == "succeeded"
    order = [steps.index(s) for s in [("progress", pb.PHASE_RESTORE), ("instance", pb.INSTANCE_STATE_STARTING),
                                      ("progress", pb.PHASE_WAIT_READY), ("progress", pb.PHASE_VERIFY),
                                      ("instance", pb.INSTANCE_STATE_READY)]]
    assert order == sorted(order) and order[-1] == len(steps) - 2
    assert ("instance", pb.INSTANCE_STATE_RUNNING) not in steps  # ready straight from starting


def test_verify_mismatch_fails_the_restore_and_kills_the_tree(
        daemon: Daemon, client: SnapdClient, tmp_path: Path, workloads: Workloads) -> None:
    pid, url = _answerer(workloads, tmp_path)
    snap = _checkpointed(daemon, pid, "--ready-http", f"{url}/health", "--verify-http", f"{url}/answer",
                         "--verify-body", BODY, "--verify-field", "answer")
    (tmp_path / "answers" / "salt").write_text("changed since the checkpoint")
    failed = snapd(daemon, "restore", snap, "--verify")
    assert failed.returncode == 38, failed.stderr
    recorded = client.get(snap).answer_check.rsplit("answer ", 1)[1]
    assert "answered" in failed.stderr and recorded in failed.stderr and "status 200" in failed.stderr
    inst = _nothing_left(client, daemon, pid)
    assert "differently than at checkpoint" in inst.detail


def test_probe_timeout_fails_the_restore_and_kills_the_tree(
        daemon: Daemon, client: SnapdClient, tmp_path: Path, workloads: Workloads) -> None:
    pid, url = _answerer(workloads, tmp_path)
    snap = _checkpointed(daemon, pid, "--ready-http", f"{url}/health", "--ready-timeout", "1")
    (tmp_path / "answers" / "health").write_text("503")
    err = error_of(lambda: client.restore(snap))
    assert err.error_class == "ReadyTimeout" and err.exit_code == 37
    assert f"GET {url}/health -> 200 did not pass within its timeout (timeout 1.0 s; last result: status 503)" \
        in err.message
    _nothing_left(client, daemon, pid)


def test_tree_ending_while_its_probe_is_waited_for_fails_the_restore_at_once(
        daemon: Daemon, client: SnapdClient, tmp_path: Path, workloads: Workloads) -> None:
    pid, url = _answerer(workloads, tmp_path)
    snap = _checkpointed(daemon, pid, "--ready-http", f"{url}/health", "--ready-timeout", "120")
    (tmp_path / "answers" / "health").write_text("503")
    waiting = threading.Event()
    failures = []

    def restore() -> None:
        with daemon.client() as c:
            failures.append(error_of(lambda: c.restore(
                snap, on_progress=lambda p: p.phase == pb.PHASE_WAIT_READY and waiting.set())))

    thread = threading.Thread(target=restore)
    thread.start()
    assert waiting.wait(30), "the restore never waited for its probe"
    psutil.Process(pid).kill()
    thread.join(30)  # long before the probe's 120 s
    (err,) = failures
    assert err.error_class == "ReadyTimeout" and "did not pass before the tree's root ended" in err.message
    _nothing_left(client, daemon, pid)


def test_background_probe_moves_running_to_ready_and_verify_needs_a_check(
        daemon: Daemon, client: SnapdClient, tmp_path: Path, workloads: Workloads) -> None:
    pid, url = _answerer(workloads, tmp_path)
    snap = _checkpointed(daemon, pid, "--ready-http", f"{url}/health")
    refused = snapd(daemon, "restore", snap, "--verify")
    assert refused.returncode == 10 and "recorded no answer check" in refused.stderr
    assert list(client.instances(all=True).instances) == []  # refused before anything was made
    (tmp_path / "answers" / "health").write_text("503")
    result = client.restore(snap, wait_ready=False)
    assert result.ready_seconds == 0
    assert state_name(client.instance(result.instance_id).state) == "running"
    (tmp_path / "answers" / "health").write_text("200")
    wait_for(lambda: state_name(client.instance(result.instance_id).state) == "ready", 30, "the probe to pass")
    assert client.instance(result.instance_id).ready_seconds > 0


def test_a_restarted_daemon_probes_again_what_it_was_probing(daemon: Daemon, client: SnapdClient, tmp_path: Path,
                                                             workloads: Workloads) -> None:
    """A daemon SIGKILLed while it probed a restored server in the background re-adopts it at
    its next start and probes it again: the instance becomes ready."""
    pid, url = _answerer(workloads, tmp_path)
    snap = _checkpointed(daemon, pid, "--ready-http", f"{url}/health")
    (tmp_path / "answers" / "health").write_text("503")
    result = client.restore(snap, wait_ready=False)
    daemon.stop(signal.SIGKILL)
    daemon.start()
    with daemon.client() as c:
        assert state_name(c.instance(result.instance_id).state) == "running"  # re-adopted, not ready yet
        (tmp_path / "answers" / "health").write_text("200")
        wait_for(lambda: state_name(c.instance(result.instance_id).state) == "ready", 30, "the probe to pass")
        assert c.instance(result.instance_id).ready_seconds > 0


def test_command_probe_runs_in_the_tree_namespace_and_the_asyncio_client_waits_for_it(
        daemon: Daemon, client: SnapdClient, tmp_path: Path, workloads: Workloads) -> None:
    pid, _ = _answerer(workloads, tmp_path)
    go = tmp_path / "answers" / "go"
    probe = f'test "$(readlink /proc/self/ns/net)" = "$(readlink /proc/$SNAPD_PID/ns/net)" && test -e {go}'
    snap = client.checkpoint(pid, ready_cmd=probe, ready_timeout_ms=30_000)
    wait_for(lambda: gone(pid), 10, "the checkpointed server to stop")
    threading.Timer(1.0, go.touch).start()

    async def restore() -> pb.RestoreResult:
        async with AsyncSnapdClient(daemon.target) as c:
            return await c.restore(snap.id, wait_ready=True)

    result = asyncio.run(restore())
    assert go.exists() and result.ready_seconds > 0 and not result.verified_digest
    assert state_name(client.instance(result.instance_id).state) == "ready"


def test_checkpoint_refused_when_the_answer_check_gets_no_answer(
        daemon: Daemon, client: SnapdClient, tmp_path: Path, workloads: Workloads) -> None:
    pid, url = _answerer(workloads, tmp_path)
    (tmp_path / "answers" / "health").write_text("500")  # GET only: the check is a POST
    nowhere = snapd(daemon, "checkpoint", str(pid), "--verify-http", "http://127.0.0.1:1/x", "--verify-body", BODY)
    assert nowhere.returncode == 39 and "got no answer" in nowhere.stderr and "untouched" in nowhere.stderr
    no_field = snapd(daemon, "checkpoint", str(pid), "--verify-http", f"{url}/plain", "--verify-body", BODY,
                     "--verify-field", "answer")
    assert no_field.returncode == 39 and "field 'answer'" in no_field.stderr
    assert psutil.Process(pid).status() != psutil.STATUS_STOPPED and list(client.list().snapshots) == []
    both = snapd(daemon, "checkpoint", str(pid), "--ready-http", f"{url}/health", "--ready-cmd", "true")
    assert both.returncode == 2 and "not both" in both.stderr
    for url_given in ("127.0.0.1:8000/health", "ftp://127.0.0.1/x", "http://127.0.0.1:99999/x"):
        bad = snapd(daemon, "checkpoint", str(pid), "--ready-http", url_given)
        assert bad.returncode == 10 and "is not an http:// URL" in bad.stderr, bad.stderr
    assert psutil.Process(pid).status() != psutil.STATUS_STOPPED and list(client.list().snapshots) == []


def test_netns_tree_probed_and_verified_at_its_recorded_url(daemon: Daemon, client: SnapdClient,
                                                            tmp_path: Path) -> None:
    """`snapd run --netns`: the server's URL is valid only inside its namespace; the checkpoint's
    request and the restored copy's probe and check are sent there, its published port aside."""
    files, report, run_dir = tmp_path / "answers", tmp_path / "answerer.report", tmp_path / "run"
    files.mkdir()
    subprocess.Popen([sys.executable, "-m", "snapd_daemon", "run", "--name", "a", "--run-dir", str(run_dir), "--netns",
                      "--", sys.executable, str(WORKLOADS / "answerer.py"), str(files), str(report)],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, cwd=WORKLOADS)
    wait_for(lambda: report.exists() and (run_dir / "a.pid").exists(), 60, "the answerer under snapd run --netns")
    init = int((run_dir / "a.pid").read_text())
    url = f"http://127.0.0.1:{report.read_text().split()[1]}"
    try:
        snap = client.checkpoint(init, ready_http=f"{url}/health", verify_http=f"{url}/plain", verify_body=BODY)
        assert snap.own_network_namespace
        wait_for(lambda: gone(init), 30, "the source to stop")
        result = client.restore(snap.id, verify=True)
        assert result.verified_digest and result.ready_seconds > 0
        (port,) = result.published
        assert port.address != f"127.0.0.1:{port.port}"
        assert state_name(client.instance(result.instance_id).state) == "ready"
        client.stop_instance(result.instance_id, grace_seconds=0)
    finally:
        for proc in psutil.Process(init).children(recursive=True) if not gone(init) else []:
            proc.kill()
        if not gone(init):
            psutil.Process(init).kill()
