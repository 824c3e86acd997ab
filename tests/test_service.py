"""The service edges: CLI, health, reflection, metrics, committed stubs."""

from __future__ import annotations

import filecmp
import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from harness import Daemon, Workloads, ask, gone, snapd, wait_for

ROOT = Path(__file__).resolve().parent.parent


def test_cli_checkpoint_restore_json(daemon: Daemon, workloads: Workloads) -> None:
    pid, report = workloads.start("memhold.py", "8")
    _, digest, _ = report.read_text().split()
    out = snapd(daemon, "checkpoint", str(pid), "--name", "cli", "--label", "team=infra", "--json")
    assert out.returncode == 0, out.stderr
    snap = json.loads(out.stdout)
    assert snap["name"] == "cli" and snap["labels"] == {"team": "infra"} and snap["root_pid"] == pid
    wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")

    listed = json.loads(snapd(daemon, "list", "--json").stdout)
    assert [s["id"] for s in listed["snapshots"]] == [snap["id"]]
    human = snapd(daemon, "inspect", "cli")
    assert human.returncode == 0 and snap["id"] in human.stdout and "memhold.py" in human.stdout

    out = snapd(daemon, "--json", "restore", "cli")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["root_pid"] == pid
    assert ask(pid, report)[1] == digest
    assert snapd(daemon, "rm", snap["id"]).returncode == 72  # its instance runs
    assert snapd(daemon, "rm", "--force", snap["id"]).returncode == 0


def test_cli_exit_codes(daemon: Daemon) -> None:
    missing = snapd(daemon, "checkpoint", "4000000")
    assert missing.returncode == 11 and "pid 4000000: no such process" in missing.stderr
    as_json = snapd(daemon, "restore", "nope", "--json")
    assert as_json.returncode == 14 and json.loads(as_json.stderr)["error"] == "SnapshotNotFound"
    assert snapd(daemon, "checkpoint", "1").returncode == 12
    assert snapd(daemon, "checkpoint", "5", "--label", "novalue").returncode == 2
    unreachable = snapd(None, "list")
    assert unreachable.returncode == 3 and "cannot reach the snapd daemon" in unreachable.stderr


def test_status_reports_criu_and_host(daemon: Daemon) -> None:
    out = snapd(daemon, "status", "--json")
    status = json.loads(out.stdout)
    checks = {c["name"]: c for c in status["checks"]}
    assert checks["criu-check"]["ok"] and status["criu_version"].startswith("4.")
    assert {"criu", "kernel", "cgroup-v2", "cgroup-root", "state-dir-space", "gpu-driver"} <= checks.keys()
    assert out.returncode == (0 if all(c["ok"] for c in checks.values()) else 1)


def test_health_and_reflection(daemon: Daemon) -> None:
    with grpc.insecure_channel(daemon.target) as ch:
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="snapd.v1.Snapshots"))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        responses = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"snapd.v1.Snapshots", "grpc.health.v1.Health"} <= names


def test_metrics_count_operations(tmp_path: Path, workloads: Workloads) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = Daemon(tmp_path, ("--metrics-address", f"127.0.0.1:{port}")).start()
    try:
        pid, _ = workloads.start("memhold.py", "4")
        with d.client() as c:
            c.checkpoint(pid, leave_running=True)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        d.stop()
    assert 'snapd_operations_total{kind="checkpoint",result="ok"} 1.0' in text
    assert 'snapd_phase_duration_seconds_count{kind="checkpoint",phase="dump"} 1.0' in text
    assert "snapd_bytes_written_total" in text


def test_committed_stubs_match_protos(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run([str(ROOT / "scripts" / "gen-proto.sh"), str(tmp_path)], check=True, env=env)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert generated, "nothing generated"
    stale = [str(p) for p in generated if not filecmp.cmp(tmp_path / p, ROOT / p, shallow=False)]
    assert not stale, f"stubs differ from their .proto; run scripts/gen-proto.sh: {stale}"


def test_graceful_stop_logs_no_traceback(daemon: Daemon) -> None:
    with daemon.client() as c:
        c.status()
        assert daemon.stop() == 0
    log = daemon.log.read_text()
    assert '"event": "daemon.stopped"' in log
    assert "Traceback" not in log and "no current event loop" not in log
