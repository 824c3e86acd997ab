"""The client-only distribution (client/pyproject.toml, `gpu-snapd-client`): installed alone into a
fresh virtualenv it brings grpcio and protobuf and none of the daemon's dependencies, and drives a
real daemon: list, checkpoint and restore of a real process, by the library and by its CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from harness import Daemon, Workloads, ask, gone, wait_for

ROOT = Path(__file__).resolve().parent.parent

# run with the fresh venv's python: the library alone, against the daemon at argv[1]
SCRIPT = """
import importlib.util, json, sys
from snapd_client import SnapdClient
absent = [m for m in ("numpy", "zstandard", "obstore", "blake3", "psutil", "snapd_daemon", "click")
          if importlib.util.find_spec(m) is not None]
with SnapdClient(sys.argv[1]) as c:
    before = [s.id for s in c.list().snapshots]
    snap = c.checkpoint(int(sys.argv[2]), name="alone")
    listed = [s.id for s in c.list().snapshots]
    print(json.dumps({"present": absent, "before": before, "snap": snap.id, "listed": listed}))
"""


def _venv(tmp: Path, extra: str = "") -> Path:
    """A fresh venv with the client installed from a copy of the checkout's client/ and proto/
    (the build writes build/ and *.egg-info beside its pyproject.toml: not into this checkout)."""
    src = tmp / "src"
    shutil.copytree(ROOT / "client", src / "client", ignore=shutil.ignore_patterns("build", "*.egg-info",
                                                                                  "__pycache__"))
    shutil.copytree(ROOT / "proto", src / "proto", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    out = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{src / 'client'}{extra}"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return venv / "bin" / "python"


def test_client_alone_in_a_fresh_venv(daemon: Daemon, workloads: Workloads, tmp_path: Path) -> None:
    python = _venv(tmp_path)
    pid, report = workloads.start("memhold.py", "8")
    _, digest, _ = report.read_text().split()

    out = subprocess.run([str(python), "-c", SCRIPT, daemon.target, str(pid)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["present"] == [] and got["before"] == [] and got["listed"] == [got["snap"]]
    wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")

    restore = subprocess.run([str(python), "-c", "import sys\nfrom snapd_client import SnapdClient\n"
                              "with SnapdClient(sys.argv[1]) as c: print(c.restore('alone').root_pid)",
                              daemon.target], capture_output=True, text=True, timeout=300)
    assert (restore.returncode, restore.stdout.strip()) == (0, str(pid)), restore.stderr
    assert ask(pid, report)[1] == digest


def test_client_cli_extra(daemon: Daemon, tmp_path: Path) -> None:
    """`gpu-snapd-client[cli]` adds click, and `python -m snapd_client` talks to the daemon."""
    python = _venv(tmp_path, "[cli]")
    out = subprocess.run([str(python), "-m", "snapd_client", "--target", daemon.target, "list", "-q"],
                         capture_output=True, text=True, timeout=120)
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")
    version = subprocess.run([str(python), "-m", "snapd_client", "--version"], capture_output=True, text=True,
                             timeout=60)
    assert version.stdout == "snapd 0.1.0\n"
