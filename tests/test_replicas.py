"""Issue #13: one snapshot, many replicas. A tree started with `snapd run` (init of its own
pid namespace, optionally its own network namespace) is checkpointed once and restored
several times at once, each copy in fresh namespaces, verified through its own memory;
a replica that fails is rolled back alone."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from faultlib import BackgroundCall, biggest_chunk
from harness import WORKLOADS, Daemon, ask, gone, processes_naming, restore_at_once, snapd, wait_for
from snapd.v1 import snapd_pb2 as pb
from snapd_client import SnapdClient, SnapdClientError
from snapd_daemon.host.namespaces import ns_pids

_CRED = struct.Struct("3i")


class Reports:
    """A unix socket the workloads report to; each report filed under the sender's host pid."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(str(path))
        self.srv.listen(64)
        self.got: dict[int, list[list[str]]] = {}
        self.lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            conn, _ = self.srv.accept()
            with conn:
                pid = _CRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))[0]
                line = conn.makefile().readline().split()
            with self.lock:
                self.got.setdefault(pid, []).append(line)

    def ask(self, pid: int) -> list[str]:
        """SIGUSR1 ``pid`` (a host pid) and return the report it sends: digest, times asked, its pid inside."""
        with self.lock:
            seen = len(self.got.get(pid, []))
        psutil.Process(pid).send_signal(10)
        wait_for(lambda: len(self.got.get(pid, [])) > seen, 30, f"a report from pid {pid}")
        return self.got[pid][seen]


def start_run(tmp: Path, reports: Reports, port: int = 0, publish: str = "", workload: str = "nsreport.py",
              log: Path | None = None) -> int:
    """`snapd run` a workload (nsreport's arguments), its stdout appended to ``log`` if given; the
    host pid of its namespace's init."""
    report = tmp / f"nsreport.{len(list(tmp.glob('nsreport.*')))}"
    run_dir = tmp / "run"
    args = [sys.executable, "-m", "snapd_daemon", "run", "--name", "w", "--run-dir", str(run_dir)]
    args += ["--netns", "--publish", publish] if publish else []
    with open(log or os.devnull, "ab") as out:
        subprocess.Popen([*args, "--", sys.executable, str(WORKLOADS / workload), str(reports.path), str(port),
                          str(report)], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.DEVNULL,
                         start_new_session=True, cwd=WORKLOADS)
    wait_for(lambda: report.exists() and (run_dir / "w.pid").exists(), 60, "the workload under snapd run")
    return int((run_dir / "w.pid").read_text())


def worker_of(root: int) -> int:
    """The host pid of the workload under the init ``root`` (pid 2 inside)."""
    return next(p.pid for p in psutil.Process(root).children() if ns_pids(p.pid)[-1] == 2)


def fetch(address: str) -> list[str]:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        return s.makefile().readline().split()


def refused(address: str) -> bool:
    try:
        fetch(address)
    except OSError:
        return True
    return False


def holds_left(daemon: Daemon) -> list[str]:
    return sorted(p.name for p in (daemon.state_dir / "holds").glob("*.json"))


def test_replicas_restore_at_once_each_in_its_own_pid_namespace(daemon: Daemon, client: SnapdClient, workloads,
                                                                 tmp_path: Path) -> None:
    reports = Reports(tmp_path / "reports.sock")
    init = start_run(tmp_path, reports)
    worker = worker_of(init)
    digest, asked, inside = reports.ask(worker)
    assert (asked, inside) == ("1", "2") and ns_pids(init)[-1] == 1
    # the server, not its init, is refused with the pid to checkpoint instead
    with pytest.raises(SnapdClientError) as refusal:
        client.checkpoint(worker)
    assert refusal.value.error_class == "ProcessProtected" and f"pid {init}" in refusal.value.message
    snap = client.checkpoint(init, name="replicated")
    assert snap.replicable and not snap.own_network_namespace
    wait_for(lambda: gone(init) and gone(worker), 30, "the source to be stopped")
    assert "; replicable (own pid namespace)" in snapd(daemon, "inspect", "replicated").stdout

    res = snapd(daemon, "--json", "restore", "replicated", "--replicas", "3")
    assert res.returncode == 0, res.stderr
    replicas = json.loads(res.stdout)["replicas"]
    roots = [int(r["root_pid"]) for r in replicas]
    assert len(set(roots)) == 3 and all(ns_pids(r)[-1] == 1 for r in roots)
    for r in replicas:
        root = int(r["root_pid"])
        copy = worker_of(root)
        assert sorted(int(p) for p in r["pids"]) == sorted([root, copy])
        assert reports.ask(copy) == [digest, "2", "2"]  # its memory is the snapshot's; pid 2 inside
    # one more while three run: still no pid clash
    fourth = client.restore("replicated")
    assert reports.ask(worker_of(fourth.root_pid)) == [digest, "2", "2"]
    assert holds_left(daemon) == []


def own_proc(reports: Reports, host_pid: int, asked: int) -> None:
    """The workload at ``host_pid`` (pid 2 of a `snapd run` tree) finds itself in /proc: what
    libcuda needs. Asked ``asked`` times so far, counted in its own memory."""
    seen = json.loads(reports.ask(host_pid)[0])
    assert seen == {"pid": 2, "asked": asked, "status_pid": 2, "nspid": [2], "name": "procself", "self": "2",
                    "init": seen["init"], "procs": [1, 2]}, seen
    assert "snapd_daemon.host.nsinit" in seen["init"]


def _proc_mounts() -> list[str]:
    """The host's proc mounts (other tests mount and unmount file systems meanwhile)."""
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if " - proc " in line]


def mount_namespace(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/mnt")


def test_snapd_run_gives_the_tree_its_own_proc_and_so_does_each_replica(
        daemon: Daemon, client: SnapdClient, workloads, tmp_path: Path) -> None:
    host_mounts = _proc_mounts()
    reports = Reports(tmp_path / "reports.sock")
    log = tmp_path / "procself.log"  # opened through the host's mounts, reopened through the tree's own
    init = start_run(tmp_path, reports, workload="procself.py", log=log)
    worker = worker_of(init)
    own_proc(reports, worker, 1)
    assert mount_namespace(init) != mount_namespace(os.getpid())
    tree_mounts = Path(f"/proc/{init}/mountinfo").read_text()
    assert "shared:" not in tree_mounts and "master:" not in tree_mounts  # nothing propagates either way
    snap = client.checkpoint(init, name="ownproc")
    wait_for(lambda: gone(init) and gone(worker), 30, "the source to be stopped")

    replicas = restore_at_once(daemon.target, "ownproc", 3)
    assert not [r for r in replicas if isinstance(r, SnapdClientError)], replicas
    roots = [r.root_pid for r in replicas]
    assert len({mount_namespace(r) for r in [*roots, os.getpid()]}) == 4
    for root in roots:
        own_proc(reports, worker_of(root), 2)  # its own /proc, its memory the snapshot's
        assert "shared:" not in Path(f"/proc/{root}/mountinfo").read_text()
    # each copy kept the log file open through its own mount namespace and writes on to it
    wait_for(lambda: len(log.read_text().splitlines()) == 4, 10, "a line from each replica in the log")
    assert log.read_text().splitlines() == ["asked 1", "asked 2", "asked 2", "asked 2"]
    for root in roots:
        psutil.Process(root).kill()
    wait_for(lambda: all(gone(r) for r in roots), 30, "the replicas to exit")
    assert snap.replicable and holds_left(daemon) == []
    assert _proc_mounts() == host_mounts  # no proc mount leaked to the host


def test_replicas_with_their_own_network_namespace_serve_on_their_own_address(
        daemon: Daemon, client: SnapdClient, workloads, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        host_port = s.getsockname()[1]
    reports = Reports(tmp_path / "reports.sock")
    init = start_run(tmp_path, reports, port=7000, publish=f"{host_port}:7000")
    digest, served = fetch(f"127.0.0.1:{host_port}")
    assert served == "1"
    snap = client.checkpoint(init, name="served")
    assert snap.replicable and snap.own_network_namespace and list(snap.namespace_ports) == [7000]
    assert "own network namespace (ports [7000])" in snapd(daemon, "inspect", "served").stdout
    wait_for(lambda: refused(f"127.0.0.1:{host_port}"), 30, "the source's relay to end with it")

    first, second = restore_at_once(daemon.target, "served", 2)
    addresses = []
    for r in (first, second):
        assert not isinstance(r, SnapdClientError), r
        [published] = r.published
        assert published.port == 7000 and published.address.startswith("127.0.0.1:")
        assert fetch(published.address) == [digest, "2"]  # its own copy: counters continue from the snapshot
        addresses.append(published.address)
    assert len(set(addresses)) == 2
    assert fetch(addresses[0]) == [digest, "3"] and fetch(addresses[1]) == [digest, "3"]
    # a replica's relay ends with it; the other keeps serving
    psutil.Process(first.root_pid).kill()
    wait_for(lambda: refused(addresses[0]), 30, "the killed replica's relay to end")
    assert fetch(addresses[1]) == [digest, "4"]
    assert holds_left(daemon) == []


def test_a_network_namespace_without_an_ip_tool_is_refused_before_anything_is_frozen(
        workloads, tmp_path: Path) -> None:
    """CRIU runs iproute2's ip to dump a network namespace (GPU hosts may lack it): refused up
    front, naming the missing tool and the fixes; the server goes on serving."""
    d = Daemon(tmp_path / "noip", env={"CR_IP_TOOL": str(tmp_path / "no-such-ip")})
    d.root.mkdir()
    d.start()
    try:
        reports = Reports(tmp_path / "reports.sock")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            host_port = s.getsockname()[1]
        init = start_run(tmp_path, reports, port=7000, publish=f"{host_port}:7000")
        with d.client() as c, pytest.raises(SnapdClientError) as info:
            c.checkpoint(init)
        err = info.value
        assert err.error_class == "CriuUnavailable" and err.exit_code == 17, err.message
        assert f"CR_IP_TOOL={tmp_path / 'no-such-ip'} is not executable" in err.message
        assert "install iproute2" in err.message
        assert fetch(f"127.0.0.1:{host_port}")  # untouched: still serving
    finally:
        d.stop()


def test_a_failed_replica_is_killed_whole_and_the_others_stay(daemon: Daemon, client: SnapdClient, workloads,
                                                              tmp_path: Path) -> None:
    reports = Reports(tmp_path / "reports.sock")
    init = start_run(tmp_path, reports)
    digest, _, _ = reports.ask(worker_of(init))
    client.checkpoint(init, name="flaky")
    wait_for(lambda: gone(init), 30, "the source to be stopped")
    # the post-restore hook of exactly one replica fails (the first to take the lock), after
    # its tree is restored and running: that tree must go, whole, and only that one
    lock, victim = tmp_path / "fail-once", tmp_path / "victim"
    hook = ["sh", "-c", f'mkdir {lock} 2>/dev/null || exit 0; echo "$SNAPD_PID" > {victim}; exit 3']
    outcomes = restore_at_once(daemon.target, "flaky", 3, post_restore_hook=hook)
    failed = [o for o in outcomes if isinstance(o, SnapdClientError)]
    kept = [o for o in outcomes if not isinstance(o, SnapdClientError)]
    assert len(failed) == 1 and failed[0].error_class == "HookFailed" and len(kept) == 2
    dead = int(victim.read_text())
    assert dead not in {r.root_pid for r in kept}
    wait_for(lambda: gone(dead), 30, "the failed replica's tree to be killed")
    # nothing of it is left: the two kept replicas are all that runs of the workload (init + worker each)
    wait_for(lambda: len(processes_naming(str(reports.path))) == 4, 30, "only the kept replicas to run")
    # (a replica's init is the daemon's child: it is the child subreaper of what it restores)
    parents = {p.ppid() for p in processes_naming(str(reports.path))}
    assert parents - {1, daemon.proc.pid} <= {r.root_pid for r in kept}
    for r in kept:
        assert reports.ask(worker_of(r.root_pid)) == [digest, "2", "2"]
    assert holds_left(daemon) == []


def test_daemon_killed_while_replicas_are_restored_leaves_none_at_next_start(
        daemon: Daemon, client: SnapdClient, workloads, tmp_path: Path) -> None:
    """Two replicas held in their memory injection (the biggest chunk, in the injected
    region, is a FIFO nobody writes), the daemon SIGKILLed: its next start kills both
    stopped copies by the host pids its journal names, and the snapshot restores again."""
    reports = Reports(tmp_path / "reports.sock")
    init = start_run(tmp_path, reports)
    digest, _, _ = reports.ask(worker_of(init))
    client.checkpoint(init, name="held")
    wait_for(lambda: gone(init), 30, "the source to be stopped")
    chunk = biggest_chunk(daemon.state_dir)
    saved = chunk.read_bytes()
    chunk.unlink()
    os.mkfifo(chunk)
    calls = [BackgroundCall(daemon.target, "restore", "held") for _ in range(2)]
    for call in calls:
        assert call.wait_until(lambda e: e.phase == pb.PHASE_INJECT, 60), call.error  # the copy exists, stopped
    copies = processes_naming(str(reports.path))
    assert len(copies) == 4  # two inits, two workers: both replicas restored and held
    assert daemon.proc is not None
    daemon.proc.kill()
    daemon.proc.wait()
    for call in calls:
        call.join()
    chunk.unlink()
    chunk.write_bytes(saved)
    daemon.start()
    with daemon.client() as c:
        assert c.status().recovered_operations >= 2
    wait_for(lambda: all(gone(p.pid) for p in copies), 30, "the held replicas to be killed")
    assert holds_left(daemon) == []
    with daemon.client() as c:
        again = c.restore("held")
    assert reports.ask(worker_of(again.root_pid)) == [digest, "2", "2"]


def test_replicas_of_a_plain_snapshot_keep_the_one_that_restored(daemon: Daemon, client: SnapdClient, workloads,
                                                                  tmp_path: Path) -> None:
    """A snapshot of a tree that shares the host's pid namespace restores once at a time:
    `--replicas 2` restores one, refuses the other (its pids are taken), keeps the one
    running, exits with the refusal's code and says how to make it replicable."""
    pid, report = workloads.start("memhold.py", "8")
    digest = ask(pid, report)[1]
    snap = client.checkpoint(pid, name="plain")
    assert not snap.replicable
    wait_for(lambda: gone(pid), 30, "the source to be stopped")
    res = snapd(daemon, "restore", "plain", "--replicas", "2")
    assert res.returncode in (13, 15), res.stderr  # ProcessBusy or PidsInUse, whichever the loser met
    assert "1 of 2 replicas failed (rolled back); the other 1 are running" in res.stderr and "snapd run" in res.stderr
    assert f"pid {pid}" in res.stdout
    assert ask(pid, report)[1] == digest
    assert holds_left(daemon) == []


def test_snapd_run_passes_signals_on_and_exits_with_the_commands_status(tmp_path: Path) -> None:
    """As a unit's ExecStart: SIGTERM to `snapd run` reaches the command (through the
    namespace's init, which would otherwise ignore it), whose status becomes run's own;
    the pid file lives as long as the command."""
    ready, run_dir = tmp_path / "up", tmp_path / "run"
    script = ("import signal, sys, time\n"
              "signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))\n"
              f"open({str(ready)!r}, 'w').write('up')\n"
              "time.sleep(300)\n")
    run = subprocess.Popen([sys.executable, "-m", "snapd_daemon", "run", "--name", "unit", "--run-dir", str(run_dir),
                            "--", sys.executable, "-c", script], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    wait_for(lambda: ready.exists() and (run_dir / "unit.pid").exists(), 30, "the command under snapd run")
    init = int((run_dir / "unit.pid").read_text())
    assert ns_pids(init)[-1] == 1 and psutil.Process(init).ppid() == run.pid
    run.send_signal(15)
    _, err = run.communicate(timeout=30)
    assert run.returncode == 7, err
    assert f"pid {init} is the init of its own pid namespace" in err.decode()
    assert not (run_dir / "unit.pid").exists() and gone(init)


def test_snapd_run_refuses_publish_without_its_own_network() -> None:
    res = subprocess.run([sys.executable, "-m", "snapd_daemon", "run", "--publish", "8080:80", "--", "true"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--publish needs --netns" in res.stderr


def test_a_mount_namespace_rooted_elsewhere_is_refused_by_name(client: SnapdClient, tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", sys.executable, "-c",
                             f"import os, time; os.chroot({str(tmp_path / 'root')!r}); print(flush=True); "
                             "time.sleep(600)"], stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"\n"
        with pytest.raises(SnapdClientError) as refusal:
            client.checkpoint(proc.pid)
        assert refusal.value.error_class == "ProcessProtected", refusal.value
        assert "mount namespace of its own whose root is not the host's /" in refusal.value.message
        assert proc.poll() is None  # refused before anything touched it
    finally:
        proc.kill()
        proc.wait()
