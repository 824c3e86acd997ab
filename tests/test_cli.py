"""What an operator sees of the `snapd` command: the real command against a real daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from harness import Daemon, Workloads, command_helps, gone, snapd, snapd_on_a_terminal, wait_for
from snapd.v1 import snapd_pb2 as pb
from snapd_client import Phase, SnapdClient, SnapdClientError, phase_name
from snapd_client.output import progress_text
from snapd_daemon.runtime import Settings


def snapd_full(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed entry point's group (serve and exit-codes included)."""
    return subprocess.run([sys.executable, "-m", "snapd_daemon", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_version_help_examples_and_defaults() -> None:
    version = snapd_full("--version")
    assert version.returncode == 0 and version.stdout.startswith("snapd 0.")
    top = snapd_full("--help").stdout
    assert "SNAPD_TARGET" in top and "socket path" in top
    commands = ["checkpoint", "restore", "list", "inspect", "rm", "pin", "unpin", "prefetch", "gc", "fsck",
                "status", "ops", "cancel", "ps", "stop", "logs", "events", "export", "import", "serve", "exit-codes"]
    everything = command_helps()
    helps = {c: everything[c] for c in commands}
    assert [c for c, text in helps.items() if "Examples:" not in text] == []
    assert "STOPPED" in helps["checkpoint"] and "--leave-running" in helps["checkpoint"]
    assert "default: 10" in " ".join(helps["restore"].split())  # --wait-for-exit
    assert all("--target" in helps[c] and "--json" in helps[c] for c in commands if c not in ("serve", "exit-codes"))


def test_target_forms(daemon: Daemon) -> None:
    path = str(daemon.socket)
    assert snapd_full("--target", path, "list").returncode == 0  # a plain socket path
    assert snapd_full("list", "--target", path).returncode == 0  # after the command
    assert snapd_full("list", env={**os.environ, "SNAPD_TARGET": path}).returncode == 0
    wrong = snapd_full("--target", path, "list", "--target", "/nonexistent/snapd.sock")  # the command's wins
    assert wrong.returncode == 3 and "unix:///nonexistent/snapd.sock" in wrong.stderr


def test_json_conventions(daemon: Daemon, workloads: Workloads) -> None:
    pid, _ = workloads.start("memhold.py", "8")
    out = snapd(daemon, "checkpoint", str(pid), "--leave-running", "--json")
    snap = json.loads(out.stdout)
    assert isinstance(snap["raw_bytes"], int) and isinstance(snap["processes"][0]["rss_bytes"], int)
    assert snap["operation_id"].startswith("op-") and snap["duration_seconds"] >= snap["checkpoint_seconds"] > 0
    assert isinstance(snap["files"][0]["size_bytes"], int)
    listed = json.loads(snapd(daemon, "list", "--json").stdout)
    assert isinstance(listed["store_disk_bytes"], int) and listed["store_disk_bytes"] > 0

    for args in (("exit-codes", "--json"), ("--json", "exit-codes")):
        codes = json.loads(snapd_full(*args).stdout)["exit_codes"]
        assert {"exit_code": 24, "error": "ChunkCorrupt", "status": "DATA_LOSS"}.items() <= \
            next(c for c in codes if c["exit_code"] == 24).items()

    usage = snapd(daemon, "list", "--bogus", "--json")
    assert usage.returncode == 2 and json.loads(usage.stderr) == {
        "error": "UsageError", "message": "No such option '--bogus'.", "exit_code": 2}
    assert "Usage:" in snapd(daemon, "list", "--bogus").stderr


def test_progress_text_has_rate_eta_and_frozen() -> None:
    moving = pb.Progress(phase=Phase.Value("PHASE_COMMIT"), bytes_done=1 << 30, bytes_total=3 << 30,
                         tree_frozen=True)
    text = progress_text(moving, rate=512 << 20, elapsed=12.0)
    assert text.split()[0] == "commit" and "1.0 GiB / 3.0 GiB" in text and "512.0 MiB/s" in text
    assert "ETA 4s" in text and "(process frozen)" in text and text.endswith("12.0s")
    waiting = pb.Progress(phase=Phase.Value("PHASE_HOOK"), message="pre-checkpoint hook")
    assert "pre-checkpoint hook" in progress_text(waiting, rate=0.0, elapsed=1.0)
    assert "ETA" not in progress_text(waiting, rate=0.0, elapsed=1.0)


def test_client_exports_phase_names() -> None:
    assert phase_name(Phase.Value("PHASE_DUMP")) == "dump" and phase_name(Phase.Value("PHASE_STOP_SOURCE")) == \
        "stop-source"
    assert phase_name(99) == "unknown-99"


def test_list_flags_name_summary_gc_and_prefixes(daemon: Daemon, workloads: Workloads, client: SnapdClient) -> None:
    pid, _ = workloads.start("memhold.py", "4")
    first = client.checkpoint(pid, name="alpha", leave_running=True)
    second = client.checkpoint(pid, name="alpha", leave_running=True)
    other = client.checkpoint(pid, name="beta", leave_running=True)
    client.pin(first.id)

    table = snapd(daemon, "list").stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "NAME", "FLAGS"]
    row = next(line for line in table if line.startswith(first.id))
    assert row.split()[1:3] == ["alpha", "pinned"]
    named = snapd(daemon, "list", "--name", "alpha").stdout.splitlines()[-1]
    assert named.startswith("2 snapshot(s) named alpha") and "on disk" not in named

    refused = snapd(daemon, "gc", "--keep-last", "0")
    assert refused.returncode == 2 and "snapd rm" in refused.stderr
    plan = snapd(daemon, "gc", "--keep-last", "1", "--dry-run")
    assert plan.returncode == 0 and "[" not in plan.stdout, plan.stdout
    assert plan.stdout.splitlines()[0].startswith("would remove 0 snapshot(s)")  # the older alpha is pinned
    client.pin(first.id, False)
    plan = snapd(daemon, "gc", "--keep-last", "1", "--dry-run").stdout.splitlines()
    assert plan[0].startswith("would remove 1 snapshot(s)") and plan[1].strip() == first.id

    unique = second.id[:-3]
    assert json.loads(snapd(daemon, "inspect", unique, "--json").stdout)["id"] == second.id
    common = os.path.commonprefix([first.id, second.id, other.id])
    ambiguous = snapd(daemon, "rm", common)
    assert ambiguous.returncode == 50 and all(s.id in ambiguous.stderr for s in (first, second, other))
    assert len(client.list().snapshots) == 3


def test_status_says_which_cgroup_limits_work(daemon: Daemon) -> None:
    out = snapd(daemon, "status", "--json")
    checks = {c["name"]: c for c in json.loads(out.stdout)["checks"]}
    root = Settings(state_dir=daemon.state_dir)  # the daemon's default root is below the cgroup2 mount
    assert root.cgroup_root is None
    limits = checks["cgroup-limits"]
    assert limits["ok"]  # placement, checkpoint and restore work: a missing limit is a warning
    if limits["warning"]:
        assert "--cgroup placement works" in limits["detail"] and "CgroupFailed" in limits["detail"]
        for controller, option in (("memory", "--memory-max"), ("pids", "--pids-max")):
            if controller in limits["detail"].split(" not available")[0]:
                assert option in limits["detail"]
    assert out.returncode == (0 if all(c["ok"] for c in checks.values()) else 1)


def test_missing_cgroup_names_the_option_that_creates_it(daemon: Daemon, workloads: Workloads,
                                                         client: SnapdClient) -> None:
    pid, _ = workloads.start("memhold.py", "4")
    snap = client.checkpoint(pid)
    wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
    out = snapd(daemon, "restore", snap.id, "--cgroup", f"absent-{os.getpid()}/x")
    assert out.returncode == 41 and "--create-cgroup" in out.stderr, out.stderr


def test_progress_on_a_terminal_and_none_elsewhere(daemon: Daemon, workloads: Workloads) -> None:
    pid, _ = workloads.start("memhold.py", "96")
    code, stdout, terminal = snapd_on_a_terminal(daemon, "checkpoint", str(pid))
    assert code == 0 and stdout.startswith("snapshot ") and "\033" not in stdout
    assert "(process frozen)" in terminal and "dump" in terminal and "\r\033[K" in terminal, terminal
    wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
    plain = snapd(daemon, "restore", stdout.split()[1].rstrip(":"))
    assert plain.returncode == 0 and "\033" not in plain.stdout + plain.stderr


def test_ops_and_cancel(daemon: Daemon, workloads: Workloads, tmp_path: Path) -> None:
    pid, _ = workloads.start("memhold.py", "4")
    outcome: dict[str, object] = {}
    started = threading.Event()

    def run() -> None:
        with SnapdClient(daemon.target) as c:
            try:
                c.checkpoint(pid, pre_checkpoint_hook=["sleep", "5"], on_progress=lambda _p: started.set())
            except SnapdClientError as err:
                outcome["error"] = err.error_class

    thread = threading.Thread(target=run)
    thread.start()
    assert started.wait(30)
    listed = json.loads(snapd(daemon, "ops", "--json").stdout)["operations"]
    assert len(listed) == 1 and listed[0]["kind"] == "checkpoint" and listed[0]["cancellable"]
    assert listed[0]["progress"]["phase"] in ("PHASE_HOOK", "PHASE_VALIDATE") and listed[0]["pids"] == [pid]
    op = listed[0]["operation_id"]
    assert op in snapd(daemon, "ops").stdout
    cancelled = snapd(daemon, "cancel", op)
    assert cancelled.returncode == 0 and "rolls back" in cancelled.stdout
    thread.join(60)
    assert outcome == {"error": "Cancelled"} and psutil.pid_exists(pid) and not gone(pid)
    again = snapd(daemon, "cancel", op)
    assert again.returncode == 1 and "no operation" in again.stdout
    assert json.loads(snapd(daemon, "ops", "--json").stdout)["operations"] == []


def test_check_config_and_no_leftovers_of_a_failed_start(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('criu_log_level = 3\n')
    ok = snapd_full("serve", "--config", str(config), "--state-dir", str(tmp_path / "state"), "--check-config")
    assert ok.returncode == 0 and "configuration OK" in ok.stdout and not (tmp_path / "state").exists()
    config.write_text('criu_log_level = 9\n')
    bad = snapd_full("serve", "--config", str(config), "--check-config")
    assert bad.returncode == 43 and "criu_log_level" in bad.stderr

    never = Daemon(tmp_path / "never-served", ("--tcp", "127.0.0.1:9"))  # plain TCP without asking: refused
    failed = subprocess.run(never.cli_args(), capture_output=True, text=True, timeout=60)
    ram = Settings(state_dir=never.state_dir).ram_dir()
    assert failed.returncode == 43 and not never.root.exists() and ram is not None and not ram.exists()


def test_daemon_exit_leaves_no_ram_directory(tmp_path: Path) -> None:
    d = Daemon(tmp_path).start()
    ram = Settings(state_dir=d.state_dir).ram_dir()
    assert ram is not None and ram.exists()
    d.stop()
    deadline = time.monotonic() + 10
    while ram.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not ram.exists()
