"""examples/scale.py, the example scheduler, against a real daemon: a small real server under
`snapd run --netns` is checkpointed once, restored as 2 replicas, then scaled back to 0."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from harness import WORKLOADS, Daemon, Workloads, gone, wait_for
from snapd_client import SnapdClient

ROOT = Path(__file__).resolve().parent.parent


def _refused(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError:
        return True
    return False


def test_scale_takes_a_model_from_0_to_2_to_0_replicas_and_prints_each_step(
        daemon: Daemon, client: SnapdClient, workloads: Workloads, tmp_path: Path) -> None:
    report, run_dir = tmp_path / "tcpserver.report", tmp_path / "run"
    subprocess.Popen([sys.executable, "-m", "snapd_daemon", "run", "--name", "model", "--run-dir", str(run_dir),
                      "--netns", "--", sys.executable, str(WORKLOADS / "tcpserver.py"), str(report)],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, cwd=WORKLOADS)
    wait_for(lambda: report.exists() and (run_dir / "model.pid").exists(), 60, "the server under snapd run")
    init = int((run_dir / "model.pid").read_text())

    out = subprocess.run([sys.executable, str(ROOT / "examples" / "scale.py"), "--target", daemon.target,
                          "--pid", str(init), "--name", "model", "--grace", "5"],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    steps = [line.split()[1] for line in lines if line.startswith("step ")]
    assert steps == ["checkpoint", "0->2", "2->0"], out.stdout
    replicas = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(replicas) == 2 and len({r["root_pid"] for r in replicas}) == 2
    addresses = [a for r in replicas for a in r["published"].values()]
    assert len(addresses) == 2 and len(set(addresses)) == 2
    assert gone(init) and all(gone(r["root_pid"]) for r in replicas)
    assert all(_refused(a) for a in addresses)  # their relays ended with them
    assert [s.name for s in client.list().snapshots] == ["model"]
    assert not list((daemon.state_dir / "holds").glob("*.json"))
