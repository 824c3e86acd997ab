"""Issue #24 item 4: `snapd restore SNAP --into PID` puts a tree started with `snapd run` into a
container or pod sandbox. Real parts: Debian's podman (`podman pod create`; its infra container
is the sandbox, on runc with explicit ulimits as this VM needs), real CRIU, a real daemon. The
restored HTTP server answers at the pod's address with the pod's host name (its readiness probe
passed there), lives in a group below the pod's cgroup, and `snapd stop` frees that group; bad pids and unfit snapshots are
refused before anything is created. One pod serves the whole module."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from faultlib import biggest_chunk, damage_chunk
from harness import WORKLOADS, Daemon, error_of, gone, mounts_naming, snapd, wait_for, wait_unmounted
from snapd_client import SnapdClient
from snapd_client.client import state_name
from snapd_daemon.errors import SandboxNotFound
from snapd_daemon.host import cgroups, sandbox
from snapd_daemon.host.cgroups import Needs, cgroup2_mount, cgroup_of
from snapd_daemon.host.reaper import Reaper
from snapd_daemon.host.sandbox import Sandbox, open_sandbox
from snapd_daemon.runtime.events import EventBus
from snapd_daemon.runtime.instances import InstanceTable, State

JOINED = ("net", "uts", "ipc")


@dataclass(frozen=True)
class Pod:
    name: str
    hostname: str
    infra: int  # host pid of its infra (pause) process: the sandbox
    address: str  # its address on podman's bridge; "127.0.0.1" (inside it) when it has no network but lo
    bridged: bool
    mounts: tuple[str, ...] = ()  # what names its mounts on the host: its infra container's id, netns and root


def _podman(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=120, env=env)


class Pods:
    """Pods made for the module (podman, runc, the VM's ulimits), removed at its end."""

    def __init__(self, conf: Path) -> None:
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        self.made: list[Pod] = []
        self.bridges = True  # until a pod with podman's bridge fails to start here

    def make(self) -> Pod:
        name = f"snapd-pod-test-{uuid.uuid4().hex[:8]}"
        # the infra image is podman's own pause image, built here from catatonit (no registry needed)
        started = self._start(name, bridged=True) if self.bridges else None
        if started is None or started.returncode != 0:  # no bridge network here: a pod with only lo
            self.bridges = False
            started = self._start(name, bridged=False)
        if started.returncode != 0:
            pytest.skip(f"podman cannot start a pod on this machine: {started.stderr.strip()}")
        infra = _podman(self.env, "pod", "inspect", name, "--format", "{{.InfraContainerID}}").stdout.strip()
        pid, netns, merged, address = _podman(
            self.env, "inspect", infra, "--format", "{{.State.Pid}}|{{.NetworkSettings.SandboxKey}}|"
            "{{.GraphDriver.Data.MergedDir}}|{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        ).stdout.strip().split("|")
        pod = Pod(name=name, hostname=name, infra=int(pid), address=address if self.bridges else "127.0.0.1",
                  bridged=self.bridges, mounts=(infra, *filter(None, [netns, merged])))
        self.made.append(pod)
        return pod

    def _start(self, name: str, bridged: bool) -> subprocess.CompletedProcess[str]:
        """Create and start the pod ``name``; one that fails to start is removed, mounts and all."""
        created = _podman(self.env, "pod", "create", "--name", name, "--hostname", name,
                          *([] if bridged else ["--network", "none"]))
        assert created.returncode == 0, created.stderr
        netns = set(mounts_naming("/run/netns/"))
        started = _podman(self.env, "pod", "start", name)
        if started.returncode != 0:
            infra = _podman(self.env, "pod", "inspect", name, "--format", "{{.InfraContainerID}}").stdout.strip()
            _podman(self.env, "pod", "rm", "-f", name)
            wait_for(lambda: set(mounts_naming("/run/netns/")) <= netns, 60, f"the netns of the failed pod {name} to go")
            if infra:
                wait_unmounted(infra)
        return started

    def remove(self, pod: Pod) -> None:
        removed = _podman(self.env, "pod", "rm", "-f", pod.name)
        assert removed.returncode == 0, removed.stderr
        wait_unmounted(*pod.mounts)


@pytest.fixture(scope="module")
def pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pods]:
    for tool in ("podman", "runc", "catatonit", "nsenter"):
        assert shutil.which(tool), f"{tool} is not installed: scripts/bootstrap.sh installs it"
    # runc, not crun (crun refuses this VM's hybrid cgroups); ulimits the VM lets a container set
    # (no CAP_SYS_RESOURCE: podman's default nofile cannot be set; podman caps nproc at 32768)
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1] % (1 << 63), 32768)
    conf = tmp_path_factory.mktemp("pod") / "containers.conf"
    conf.write_text(f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
                    '[engine]\nruntime = "runc"\n')
    made = Pods(conf)
    try:
        yield made
    finally:
        for made_pod in made.made:
            _podman(made.env, "pod", "rm", "-f", made_pod.name)
        wait_unmounted(*(m for made_pod in made.made for m in made_pod.mounts))


@pytest.fixture(scope="module")
def pod(pods: Pods) -> Pod:
    """The pod most tests share."""
    return pods.make()


def _close(daemon: Daemon) -> None:
    """Stop the daemon's live instances (a failed test's too: the pods' removal would not end
    them on a host whose runtime kills by cgroup v1), then the daemon."""
    with daemon.client() as c:
        for inst in c.instances().instances:
            c.stop_instance(inst.id)
    daemon.close()


@pytest.fixture(scope="module")
def pod_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = Daemon(tmp_path_factory.mktemp("podd")).start()
    yield daemon
    _close(daemon)


@pytest.fixture(scope="module")
def pod_client(pod_daemon: Daemon) -> Iterator[SnapdClient]:
    with pod_daemon.client() as c:
        yield c


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return str(answer.read().decode().strip())


def _get(pod: Pod, port: int) -> str:
    """GET /host of the server at the pod's address: from the host over podman's bridge, else from
    inside the pod's network namespace; OSError when nothing answers."""
    url = f"http://{pod.address}:{port}/host"
    if pod.bridged:
        return _fetch(url)
    inside = subprocess.run(["nsenter", f"--net=/proc/{pod.infra}/ns/net", sys.executable, "-c",
                             "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10)"
                             ".read().decode().strip())", url], capture_output=True, text=True, timeout=30)
    if inside.returncode != 0:
        raise ConnectionError(inside.stderr.strip().splitlines()[-1])
    return inside.stdout.strip()


def _serve(tmp: Path, port: int, *, netns: bool = False, wrap: tuple[str, ...] = (), hold_mib: int = 0) -> int:
    """`snapd run` the HTTP server on every address, port ``port`` (``wrap`` runs `snapd run` itself); the init's host pid."""
    report, run_dir = tmp / f"httpserver.{port}", tmp / f"run.{port}"
    command = [*wrap, sys.executable, "-m", "snapd_daemon", "run", "--name", "w", "--run-dir", str(run_dir),
               *(["--netns"] if netns else []), "--", sys.executable, str(WORKLOADS / "httpserver.py"), "0.0.0.0",
               str(port), *([str(hold_mib)] if hold_mib else []), str(report)]
    subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, cwd=WORKLOADS)
    wait_for(lambda: report.exists() and (run_dir / "w.pid").exists(), 60, "the HTTP server under snapd run")
    return int((run_dir / "w.pid").read_text())


def _snapshot(client: SnapdClient, init: int, name: str, **options: str) -> str:
    snap = client.checkpoint(init, name=name, **options)
    wait_for(lambda: gone(init), 10, "the checkpointed server to stop")
    return str(snap.id)


def _groups_below(pod: Pod) -> list[str]:
    """The groups snapd made below the pod's infra group."""
    mount = cgroup2_mount()
    assert mount is not None
    return sorted(p.name for p in (mount / cgroup_of(pod.infra).lstrip("/")).glob("snapd-*"))


def _ns(pid: int, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def test_restored_server_answers_at_the_pods_address_inside_its_cgroup_and_stop_frees_it(
        pod: Pod, pod_daemon: Daemon, pod_client: SnapdClient, tmp_path: Path) -> None:
    port = _free_port()
    init = _serve(tmp_path, port)
    assert _fetch(f"http://127.0.0.1:{port}/host") == f"{socket.gethostname()} 1"
    # its readiness probe goes out from the root's network namespace: the pod's, once restored
    snap = _snapshot(pod_client, init, "podserver", ready_http=f"http://127.0.0.1:{port}/count")

    done = snapd(pod_daemon, "restore", snap, "--into", str(pod.infra), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    root, instance = int(result["root_pid"]), result["instance_id"]
    assert result["ready_seconds"] > 0
    # the pod's address reaches it, and it sees the pod's host name; its memory came back (count 1,
    # then the probe's request: 2)
    assert _get(pod, port) == f"{pod.hostname} 3"
    with pytest.raises(OSError):
        _fetch(f"http://127.0.0.1:{port}/host")  # not on the host's network any more
    for kind in JOINED:
        assert _ns(root, kind) == _ns(pod.infra, kind), kind
    assert _ns(root, "pid") != _ns(pod.infra, "pid")  # its own pid namespace, made anew
    sandbox_group = cgroup_of(pod.infra)
    placed = cgroup_of(root)
    assert placed.startswith(sandbox_group + "/snapd-"), (placed, sandbox_group)
    (listed,) = json.loads(snapd(pod_daemon, "ps", "--json").stdout)["instances"]
    assert listed["id"] == instance and listed["cgroup"] == placed and listed["state"] == "ready"
    assert listed["sandbox"] == {"pid": pod.infra, "cgroup": sandbox_group}
    assert all(cgroup_of(pid) == placed for pid in listed["pids"])

    stopped = snapd(pod_daemon, "stop", instance)
    assert stopped.returncode == 0, stopped.stderr
    assert all(gone(pid) for pid in listed["pids"])
    # its group is removed with it, just after it reads stopped
    wait_for(lambda: _groups_below(pod) == [], 10, "its group to be removed")
    assert _ns(pod.infra, "net")  # the pod lives on
    with pytest.raises(OSError):
        _get(pod, port)


def test_bad_pids_and_unfit_snapshots_are_refused_before_anything_is_created(
        pod: Pod, pod_daemon: Daemon, pod_client: SnapdClient, tmp_path: Path) -> None:
    before = len(pod_client.instances(all=True).instances)
    snap = _snapshot(pod_client, _serve(tmp_path, _free_port()), "podserver-refusals")

    ended = subprocess.Popen(["true"])
    ended.wait()
    err = error_of(lambda: pod_client.restore(snap, into_pid=ended.pid))
    assert err.error_class == "SandboxNotFound" and f"pid {ended.pid}: no such process" in err.message
    cli = snapd(pod_daemon, "restore", snap, "--into", str(os.getpid()))
    assert cli.returncode == 65, cli.stderr
    assert "shares the daemon's network namespace: a host process" in cli.stderr and "Traceback" not in cli.stderr
    err = error_of(lambda: pod_client.restore(snap, into_pid=pod.infra, publish_host="127.0.0.1"))
    assert err.error_class == "InvalidRequest" and "publish_host" in err.message

    # a tree of the host's pid namespace, and one started with --netns: refused with the reason
    plain = subprocess.Popen([sys.executable, str(WORKLOADS / "ticker.py"), str(tmp_path / "ticker.report")],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
    wait_for(lambda: (tmp_path / "ticker.report").exists(), 30, "the ticker")
    plain_snap = pod_client.checkpoint(plain.pid, name="plain").id
    plain.wait(timeout=10)
    err = error_of(lambda: pod_client.restore(plain_snap, into_pid=pod.infra))
    assert err.error_class == "SandboxRefused" and err.exit_code == 66
    assert "shared the host's pid namespace; only trees started with `snapd run`" in err.message
    netns_snap = _snapshot(pod_client, _serve(tmp_path, _free_port(), netns=True), "podserver-netns")
    err = error_of(lambda: pod_client.restore(netns_snap, into_pid=pod.infra))
    assert err.error_class == "SandboxRefused" and "`snapd run --netns`" in err.message

    assert len(pod_client.instances(all=True).instances) == before
    assert _groups_below(pod) == []


def test_a_tree_with_its_own_uts_namespace_is_refused_and_the_pods_hostname_kept(
        pod: Pod, pod_daemon: Daemon, pod_client: SnapdClient, tmp_path: Path) -> None:
    """CRIU would write the tree's host name into the pod's UTS namespace after joining it."""
    wrap = ("unshare", "--uts", "sh", "-c", 'hostname own-uts-tree && exec "$@"', "sh")
    snap = _snapshot(pod_client, _serve(tmp_path, _free_port(), wrap=wrap), "podserver-uts")
    err = error_of(lambda: pod_client.restore(snap, into_pid=pod.infra))
    assert err.error_class == "SandboxRefused" and "uts namespace(s) of its own" in err.message
    seen = subprocess.run(["nsenter", f"--uts=/proc/{pod.infra}/ns/uts", "hostname"], capture_output=True, text=True)
    assert seen.stdout.strip() == pod.hostname
    assert _groups_below(pod) == []
    assert not pod_client.instances().instances


def test_a_restore_failing_inside_the_pod_leaves_nothing_behind(
        pod: Pod, pod_daemon: Daemon, pod_client: SnapdClient, tmp_path: Path) -> None:
    """A corrupt chunk found while injecting, once CRIU has made the tree in the pod's namespaces
    and group: the tree is killed, its group removed, the pod left as it was."""
    port = _free_port()
    snap = _snapshot(pod_client, _serve(tmp_path, port, hold_mib=32), "podserver-corrupt")
    damage_chunk(biggest_chunk(pod_daemon.state_dir), "flip")
    err = error_of(lambda: pod_client.restore(snap, into_pid=pod.infra))
    assert err.error_class == "ChunkCorrupt", err.message
    (failed,) = [i for i in pod_client.instances(all=True).instances if i.snapshot_id == snap]
    assert state_name(failed.state) == "exited" and "its restore failed" in failed.detail
    assert all(gone(p.pid) for p in failed.processes)
    assert _groups_below(pod) == []
    with pytest.raises(OSError):
        _get(pod, port)


def test_a_snapshot_larger_than_the_pods_memory_max_is_refused_with_the_figures(
        pod: Pod, pod_daemon: Daemon, pod_client: SnapdClient, tmp_path: Path) -> None:
    mount = cgroup2_mount()
    assert mount is not None
    group = mount / cgroup_of(pod.infra).lstrip("/")
    if not (group / "memory.max").exists():
        pytest.skip(f"{group} has no memory.max: the memory controller is not enabled in this host's cgroup2 "
                    f"hierarchy ({mount}/cgroup.controllers: {(mount / 'cgroup.controllers').read_text().strip()}"
                    "; a hybrid host keeps it on cgroup v1), so a pod's memory limit cannot be set there")
    snap = _snapshot(pod_client, _serve(tmp_path, _free_port()), "podserver-big")
    limit = int((group / "memory.current").read_text()) + (1 << 20)
    (group / "memory.max").write_text(str(limit))
    try:
        err = error_of(lambda: pod_client.restore(snap, into_pid=pod.infra))
    finally:
        (group / "memory.max").write_text("max")
    assert err.error_class == "CgroupTooSmall" and f"memory.max {limit}" in err.message
    assert _groups_below(pod) == []



def test_the_tree_ends_with_its_pod(pods: Pods, pod_daemon: Daemon, pod_client: SnapdClient,
                                    tmp_path: Path) -> None:
    """A deleted pod takes the restored server with it (the runtime knows nothing of it): the
    daemon sees the sandbox's process end, kills the tree, and removes its group."""
    own = pods.make()
    port = _free_port()
    snap = _snapshot(pod_client, _serve(tmp_path, port), "podserver-ends")
    result = pod_client.restore(snap, into_pid=own.infra)
    assert _get(own, port) == f"{own.hostname} 1"
    placed = result.cgroup
    pods.remove(own)
    wait_for(lambda: state_name(pod_client.instance(result.instance_id).state) == "exited", 30,
             "the instance to end with its pod")
    ended = pod_client.instance(result.instance_id)
    assert f"its sandbox (pid {own.infra}) ended" in ended.detail
    assert ended.exit_status.signal == signal.SIGKILL and all(gone(p.pid) for p in ended.processes)
    mount = cgroup2_mount()
    assert mount is not None
    wait_for(lambda: not (mount / placed.lstrip("/")).exists(), 10, "its group to be removed")


def test_a_pod_deleted_while_no_daemon_ran_ends_the_tree_at_the_next_start(
        pods: Pods, tmp_path: Path) -> None:
    own = pods.make()
    daemon = Daemon(tmp_path).start()
    try:
        with daemon.client() as c:
            port = _free_port()
            snap = _snapshot(c, _serve(tmp_path, port), "podserver-restart")
            result = c.restore(snap, into_pid=own.infra)
        daemon.stop(signal.SIGKILL)
        pods.remove(own)
        assert _ns(result.root_pid, "net")  # the tree outlived the pod while no daemon ran
        daemon.start()
        with daemon.client() as c:
            wait_for(lambda: state_name(c.instance(result.instance_id).state) == "exited", 30,
                     "the re-adopted instance to end")
            assert f"its sandbox (pid {own.infra}) ended" in c.instance(result.instance_id).detail
        wait_for(lambda: gone(result.root_pid), 10, "the tree to be gone")
        mount = cgroup2_mount()
        assert mount is not None
        wait_for(lambda: not (mount / result.cgroup.lstrip("/")).exists(), 10, "its group to be removed")
    finally:
        _close(daemon)


def test_the_sandboxs_gpus_come_from_its_environment() -> None:
    """The GPUs a restore into a process's sandbox may use: its NVIDIA_VISIBLE_DEVICES, read
    from /proc (the placement's part is test_gpu_plan's)."""
    env = {**os.environ, "NVIDIA_VISIBLE_DEVICES": "1,GPU-0000000e-0000-0000-0000-000000000000"}
    held = subprocess.Popen(["unshare", "--net", "sleep", "600"], env=env)
    try:
        wait_for(lambda: _ns(held.pid, "net") != _ns(os.getpid(), "net"), 10, "the process in its own network")
        with open_sandbox(held.pid) as box:
            assert box.gpus == ("1", "GPU-0000000e-0000-0000-0000-000000000000")
            assert box.cgroup == cgroup_of(held.pid)
    finally:
        held.kill()
        held.wait()


def test_a_sandbox_that_ends_during_the_restore_is_noticed_before_it_counts_as_restored() -> None:
    """The restore checks its sandbox once more just before its commit is final
    (restore/run.py): a pod deleted while the readiness probe was waited for fails the
    restore (SandboxNotFound, the undo kills the tree) instead of reporting a success."""
    held = subprocess.Popen(["unshare", "--net", "sleep", "600"])
    try:
        wait_for(lambda: _ns(held.pid, "net") != _ns(os.getpid(), "net"), 10, "the process in its own network")
        with open_sandbox(held.pid) as box:
            box.check_alive()
            held.kill()
            held.wait()
            with pytest.raises(SandboxNotFound) as ended:
                box.check_alive()
            assert f"pid {held.pid}: it ended during the restore" in str(ended.value)
    finally:
        held.kill()
        held.wait()


def test_a_group_whose_killed_tree_outlives_the_failed_restores_wait_goes_when_the_tree_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restore into a sandbox that fails after CRIU made its tree removes the group it made
    below the sandbox's cgroup, waiting a while for the killed tree to go; a tree still there
    after that wait (its wait shortened here) leaves the group to its instance, recorded at its
    creation, whose end removes it once the tree is gone. Real cgroup, real processes."""
    mount = cgroup2_mount()
    if mount is None:
        pytest.skip("no cgroup2 hierarchy is mounted on this host")
    monkeypatch.setattr(cgroups, "_RMDIR_WAIT_SECONDS", 0.2)
    reaper = Reaper()
    reaper._thread.start()  # its thread only: start() would make pytest the subreaper of every test's children
    table = InstanceTable(tmp_path / "instances", reaper, EventBus(), keep_exited=10, max_age=3600)
    owner = subprocess.Popen(["sleep", "600"])  # the sandbox's process
    parent = mount / f"snapd-test-{uuid.uuid4().hex[:8]}"
    parent.mkdir()
    tree = None
    try:
        box = Sandbox(pid=owner.pid, start_time=psutil.Process(owner.pid).create_time(), cgroup=f"/{parent.name}",
                      gpus=None)
        with pytest.raises(RuntimeError, match="the restore failed"):
            with (sandbox.placement(box, "snapd-op-late", Needs("snap", 1 << 20, 2)) as group,
                  table.placing("op-late", (box.pid, box.start_time, box.cgroup), group.proc_path)):
                tree = subprocess.Popen(["sleep", "600"])
                (mount / group.proc_path.lstrip("/") / "cgroup.procs").write_text(str(tree.pid))
                inst = table.create("op-late", "snap", "late", [(tree.pid, psutil.Process(tree.pid).create_time())])
                raise RuntimeError("the restore failed")
        placed = mount / group.proc_path.lstrip("/")
        assert placed.exists()  # the restore's removal gave up: its tree still ran
        created = table.get(inst.id)
        assert created.cgroup == group.proc_path and created.sandbox_pid == owner.pid
        tree.kill()  # the tree ends, late; the reaper's thread reaps it and ends the instance
        wait_for(lambda: table.state_of(inst.id) is State.EXITED, 10, "the instance to end")
        wait_for(lambda: not placed.exists(), 10, "its group to be removed")
    finally:
        for proc in (tree, owner):
            if proc is not None and proc.poll() is None:
                proc.kill()
        owner.wait()
        for group_dir in sorted((p for p in parent.rglob("*") if p.is_dir()), reverse=True):
            group_dir.rmdir()
        parent.rmdir()
