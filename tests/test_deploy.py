"""What deploy/ and the scripts ship: the systemd unit, the example configuration, the demo."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from snapd_daemon.server import config
from snapd_daemon.server.cli import serve

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "systemd" / "gpu-snapd.service"
INSTALLED_SNAPD = "/opt/gpu-snapd/venv/bin/snapd"


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` is clean. It checks that ExecStart's program exists, so it runs
    on a copy whose ExecStart names this environment's snapd instead of the installed one."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("no systemd-analyze here (scripts/bootstrap.sh installs the systemd package)")
    snapd = Path(sys.executable).parent / "snapd"
    assert snapd.exists(), f"{snapd}: snapd is not installed in this environment"
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED_SNAPD} serve --config /etc/gpu-snapd/config.toml" in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(INSTALLED_SNAPD, str(snapd)))
    out = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=120)
    assert (out.returncode, out.stdout + out.stderr) == (0, "")


def test_unit_keeps_restored_trees_and_the_socket_layout() -> None:
    keys = [line.strip() for line in UNIT.read_text().splitlines() if "=" in line and not line.startswith("#")]
    for expected in ("KillMode=process", "Type=notify", "StateDirectory=gpu-snapd", "RuntimeDirectory=gpu-snapd",
                     "Restart=on-failure", "ConfigurationDirectory=gpu-snapd"):
        assert expected in keys
    # options that would confine every restored tree too (see the unit's header)
    for ruled_out in ("NoNewPrivileges=yes", "ProtectSystem", "PrivateTmp", "SystemCallFilter", "OOMScoreAdjust"):
        assert not any(k.startswith(ruled_out) for k in keys)


def test_example_config_has_only_serve_options() -> None:
    known = {p.name for p in serve.params if p.name}
    values = config.load(ROOT / "deploy" / "config.toml", known)
    assert values["socket_group"] == "gpu-snapd" and values["state_dir"] == "/var/lib/gpu-snapd"


def test_demo_leaves_nothing_and_writes_no_escapes_off_a_terminal() -> None:
    """scripts/demo.sh end to end, its output a pipe: plain text; it works in a new directory of
    its own (another demo's, or the old fixed /tmp/gpu-snapd-demo, is left alone) and removes it."""
    if not (ROOT / ".venv" / "bin" / "snapd").exists():
        pytest.skip("the demo runs this checkout's .venv, which scripts/bootstrap.sh (scripts/test.sh) makes")
    env = {k: v for k, v in os.environ.items() if k not in ("SNAPD_DEMO_KEEP", "SNAPD_DEMO_DIR")}
    out = subprocess.run([str(ROOT / "scripts" / "demo.sh")], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK: pid" in out.stdout and "\033" not in out.stdout + out.stderr
    work = Path(re.search(r"logs in (/tmp/gpu-snapd-demo\.\w{6})/daemon\.log", out.stdout)[1])  # type: ignore[index]
    assert not work.exists()
