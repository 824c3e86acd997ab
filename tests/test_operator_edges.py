"""What an operator meets first (issue 26): the scripts' usage, `snapd --version`, help
examples, completion, list's filters and formats, status warnings, the messages of
replicas, Ctrl-C and `snapd run`, `--wait-for-exit 0`, --check-config and a non-root serve."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness import Daemon, Workloads, command_helps, gone, snapd, snapd_on_a_terminal, wait_for
from s3server import S3Server
from snapd_client import SnapdClient

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ["install-service.sh", "demo.sh", "test.sh", "bootstrap.sh", "install-criu.sh"]
NOBODY = 65534


def snapd_full(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "snapd_daemon", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_help_does_nothing_and_unknown_options_fail(script: str, tmp_path: Path) -> None:
    marker = tmp_path / "untouched"
    env = {**os.environ, "SNAPD_DEMO_DIR": str(marker), "SNAPD_CRIU_PREFIX": str(marker)}
    helped = subprocess.run([str(ROOT / "scripts" / script), "--help"], capture_output=True, text=True, timeout=60,
                            env=env)
    assert helped.returncode == 0 and helped.stdout.startswith("Usage:"), helped.stderr
    assert not marker.exists()
    if script != "test.sh":  # its arguments go to pytest, which runs the bootstrap first (slow): below
        wrong = subprocess.run([str(ROOT / "scripts" / script), "--bogus"], capture_output=True, text=True,
                               timeout=60, env=env)
        assert wrong.returncode == 2 and "--bogus" in wrong.stderr and not marker.exists()


def test_test_sh_maps_pytest_usage_errors_to_2() -> None:
    out = subprocess.run([str(ROOT / "scripts" / "test.sh"), "--no-such-pytest-option"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2, out.stderr


def test_demo_refuses_an_existing_directory(tmp_path: Path) -> None:
    other = tmp_path / "another-demo"
    other.mkdir()
    (other / "daemon.log").write_text("someone else's\n")
    out = subprocess.run([str(ROOT / "scripts" / "demo.sh")], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "SNAPD_DEMO_DIR": str(other)})
    assert out.returncode == 1 and "exists" in out.stderr
    assert (other / "daemon.log").read_text() == "someone else's\n"


def test_version_is_answered_without_heavy_imports() -> None:
    code = ("import sys\nsys.argv = ['snapd', '--version']\nfrom snapd_daemon.server.entry import main\nmain()\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'grpc', 'google', 'click', 'numpy', 'zstandard', "
            "'obstore', 'psutil', 'structlog'}))\n"
            "print(sorted(m for m in sys.modules if m.startswith('snapd_daemon.') and m != 'snapd_daemon.server.entry'"
            " and m != 'snapd_daemon.server'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.splitlines() == ["snapd 0.1.0", "[]", "[]"], out.stderr
    assert snapd_full("-V").stdout == "snapd 0.1.0\n"
    assert snapd_full("--json", "--version").stdout == "snapd 0.1.0\n"  # the full parser's --version


def test_every_command_has_examples_in_its_help() -> None:
    helps = command_helps()
    assert {"push", "pull", "run", "completion", "serve", "list"} <= helps.keys()
    missing = [name for name, text in helps.items() if "Examples:" not in text]
    assert missing == []


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(shell: str) -> None:
    out = snapd_full("completion", shell)
    assert out.returncode == 0 and "_SNAPD_COMPLETE" in out.stdout and f"{shell}_complete" in out.stdout
    assert snapd_full("completion", "tcsh").returncode == 2


def test_bash_completion_completes_commands_and_options() -> None:
    def complete(words: str, cword: int) -> list[str]:
        env = {**os.environ, "COMP_WORDS": words, "COMP_CWORD": str(cword), "_SNAPD_COMPLETE": "bash_complete"}
        out = subprocess.run([sys.executable, "-m", "snapd_daemon"], capture_output=True, text=True, timeout=60,
                             env=env)
        return out.stdout.splitlines()

    assert "plain,list" in complete("snapd li", 1) and "plain,serve" in complete("snapd se", 1)
    assert "plain,--label" in complete("snapd list --la", 2)


def test_list_quiet_format_and_label(daemon: Daemon, workloads: Workloads, client: SnapdClient) -> None:
    pid, _ = workloads.start("memhold.py", "4")
    a = client.checkpoint(pid, name="a", labels={"model": "x", "stage": "warm"}, leave_running=True)
    b = client.checkpoint(pid, name="b", labels={"model": "y"}, leave_running=True)
    assert snapd(daemon, "list", "-q").stdout == f"{a.id}\n{b.id}\n"
    assert snapd(daemon, "list", "--label", "model=y", "-q").stdout == f"{b.id}\n"
    assert snapd(daemon, "list", "--label", "model=x", "--label", "stage=warm", "-q").stdout == f"{a.id}\n"
    assert snapd(daemon, "list", "--label", "model=z", "-q").stdout == ""
    listed = json.loads(snapd(daemon, "list", "--label", "model=x", "--json").stdout)
    assert [s["id"] for s in listed["snapshots"]] == [a.id]
    formatted = snapd(daemon, "list", "--format", r"{{.Id}}\t{{ .Name }} {{.RawBytes}} {{.Labels}}").stdout
    assert formatted.splitlines()[1] == f'{b.id}\tb {b.raw_bytes} {{"model": "y"}}'
    bad = snapd(daemon, "list", "--format", "{{.Bogus}}")
    assert bad.returncode == 2 and "no field 'Bogus'" in bad.stderr and "RawBytes" in bad.stderr
    assert snapd(daemon, "list", "--label", "novalue").returncode == 2
    assert snapd(daemon, "list", "-q", "--format", "{{.Id}}").returncode == 2


def _gpu_driver_present() -> bool:
    from snapd_daemon.host import nvml

    return bool(nvml.read().driver_version)


def test_status_warns_and_gpu_required_fails(tmp_path: Path) -> None:
    if _gpu_driver_present():
        pytest.skip("an NVIDIA driver is reachable here: the gpu-driver check passes either way")
    (tmp_path / "plain").mkdir()
    (tmp_path / "required").mkdir()
    plain = Daemon(tmp_path / "plain").start()
    required = Daemon(tmp_path / "required", ("--gpu-required",)).start()
    try:
        for d, ok in ((plain, True), (required, False)):
            out = snapd(d, "status", "--json")
            checks = {c["name"]: c for c in json.loads(out.stdout)["checks"]}
            gpu = checks["gpu-driver"]
            assert (gpu["ok"], gpu["warning"]) == (ok, ok)
            assert ("gpu_required is set" in gpu["detail"]) != ok
            assert out.returncode == (0 if all(c["ok"] for c in checks.values()) else 1)
            text = snapd(d, "status").stdout
            assert f"[{'warn' if ok else 'FAIL'}] gpu-driver" in text and "warning(s)" in text
        assert snapd(required, "status").returncode == 1
    finally:
        plain.close()
        required.close()


def test_status_limits_missing_is_a_warning(daemon: Daemon) -> None:
    checks = {c["name"]: c for c in json.loads(snapd(daemon, "status", "--json").stdout)["checks"]}
    limits = checks["cgroup-limits"]
    assert limits["ok"] and limits["warning"] == ("not available" in limits["detail"])


def test_replicas_of_a_plain_snapshot_say_none_runs(daemon: Daemon, workloads: Workloads,
                                                    client: SnapdClient) -> None:
    pid, _ = workloads.start("memhold.py", "4")
    snap = client.checkpoint(pid, leave_running=True)  # the original holds its pids: every copy is refused
    out = snapd(daemon, "restore", snap.id, "--replicas", "2")
    assert out.returncode != 0
    assert "all 2 replicas failed; none is running" in out.stderr and "others are running" not in out.stderr
    assert "started with `snapd run`" in out.stderr
    shaped = json.loads(snapd(daemon, "restore", snap.id, "--replicas", "2", "--json").stdout)
    assert shaped["replicas"] == [] and [e["error"] for e in shaped["errors"]] in (
        ["PidsInUse"] * 2, ["PidsInUse", "ProcessBusy"], ["ProcessBusy", "PidsInUse"])


_NO_REAP = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, sys.argv[1], "4", sys.argv[2]], start_new_session=True)
print(child.pid, flush=True)
time.sleep(600)  # never waits for the child: once killed it stays a zombie
"""


def test_wait_for_exit_0_does_not_wait(daemon: Daemon, workloads: Workloads, client: SnapdClient,
                                       tmp_path: Path) -> None:
    """A zombie holds the snapshot's pid: with --wait-for-exit 0 the restore refuses at once."""
    parent = subprocess.Popen([sys.executable, "-c", _NO_REAP, str(ROOT / "tests" / "workloads" / "memhold.py"),
                               str(tmp_path / "memhold.report")], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        wait_for(lambda: (tmp_path / "memhold.report").exists(), 60, "memhold to report")
        snap = client.checkpoint(pid)  # stopped afterwards: a zombie, as its parent never reaps it
        wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
        out = snapd(daemon, "restore", snap.id, "--wait-for-exit", "0")
        assert out.returncode == 23 and f"pid {pid} is still held by an exiting process after 0 s" in out.stderr
    finally:
        parent.kill()
        parent.wait()


def test_ctrl_c_display_on_a_terminal(daemon: Daemon, workloads: Workloads) -> None:
    """After Ctrl-C: each message on a line of its own, the progress line never drawn again."""
    pid, _ = workloads.start("memhold.py", "8")
    marker = f"3.17{os.getpid()}"
    interrupted = []

    def interrupt(seen: bytes, proc: subprocess.Popen[str]) -> None:
        if not interrupted and b"pre-checkpoint hook" in seen:
            proc.send_signal(signal.SIGINT)
            interrupted.append(True)

    code, _, terminal = snapd_on_a_terminal(daemon, "checkpoint", str(pid), "--pre-hook", f"sleep {marker}",
                                            on_output=interrupt)
    assert code == 45 and interrupted, terminal
    after = terminal[terminal.index("snapd: cancelling"):]
    assert "\033" not in after and "pre-checkpoint hook" not in after, after
    lines = after.replace("\r\n", "\n").split("\n")
    assert [line for line in lines if "snapd:" in line and not line.startswith("snapd:")] == []
    assert "CancelOperation" not in terminal and "at the caller's request" in terminal


def test_run_banner_survives_a_shared_log(tmp_path: Path) -> None:
    """`snapd run ... >log 2>&1`: the banner first, then the server's stdout and stderr in order."""
    log = tmp_path / "run.log"
    script = "echo one; echo two >&2; echo three"
    with open(log, "w") as f:
        out = subprocess.run([sys.executable, "-m", "snapd_daemon", "run", "--", "sh", "-c", script], stdout=f,
                             stderr=subprocess.STDOUT, timeout=120)
    lines = log.read_text().splitlines()
    assert out.returncode == 0 and len(lines) == 4, lines
    assert lines[0].startswith("snapd run: pid ") and lines[1:] == ["one", "two", "three"]


def test_check_config_did_you_mean_and_unreachable_endpoint(tmp_path: Path, s3: S3Server) -> None:
    config = tmp_path / "config.toml"
    config.write_text('socket_grup = "gpu-snapd"\n')
    typo = snapd_full("serve", "--config", str(config), "--check-config")
    assert typo.returncode == 43 and "socket_grup (did you mean socket_group?)" in typo.stderr

    config.write_text('remote_endpoint = "http://127.0.0.1:9"\nremote_bucket = "b"\nremote_allow_plaintext = true\n')
    closed = snapd_full("serve", "--config", str(config), "--check-config")
    assert closed.returncode == 43 and "remote_endpoint" in closed.stderr and "cannot connect to" in closed.stderr

    config.write_text(f'remote_endpoint = "{s3.endpoint}"\nremote_bucket = "b"\nremote_allow_plaintext = true\n')
    running = snapd_full("serve", "--config", str(config), "--check-config")
    assert running.returncode == 0 and "configuration OK" in running.stdout, running.stderr


def test_serve_as_non_root_is_a_clear_error(tmp_path: Path) -> None:
    code = ("import os, sys\nfrom snapd_daemon.server.cli import main\n"
            "os.setgroups([]); os.setgid(%d); os.setuid(%d)\n"
            "sys.argv = ['snapd', 'serve', '--state-dir', sys.argv[1], '--socket', sys.argv[1] + '/s.sock']\n"
            "main()\n") % (NOBODY, NOBODY)
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "state")], capture_output=True, text=True,
                         timeout=60, cwd="/")
    assert out.returncode == 48 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("snapd serve: error: `snapd serve` runs as root") and f"uid {NOBODY}" in out.stderr
