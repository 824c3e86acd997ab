"""Restores into cgroup v2 groups below the daemon's delegated root (real cgroupfs).

Each test uses a delegated root of its own, <cgroup2 mount>/snapd-test-<random>,
which the daemon creates on first use and the fixture removes. On a hybrid host
(cgroup2 at /sys/fs/cgroup/unified with no memory/cpu/pids/cpuset controllers)
the limit tests skip, naming the missing controller.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from harness import Daemon, Workloads, ask, error_of, gone, wait_for
from snapd_client import CgroupSpec
from snapd_daemon.host.cgroups import cgroup2_mount, cgroup_of
from snapd_daemon.host.hostmemory import GROUP_RESERVE, cgroup_room


@pytest.fixture
def cgroup_root() -> Iterator[Path]:
    mount = cgroup2_mount()
    if mount is None:
        pytest.skip("no cgroup2 hierarchy is mounted on this host")
    root = mount / f"snapd-test-{secrets.token_hex(4)}"
    yield root
    _remove_tree(root)


def _remove_tree(root: Path) -> None:
    """Kill whatever still runs below ``root`` and remove its groups, deepest first."""
    if not root.exists():
        return
    groups = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
    for group in [*groups, root]:
        for pid in (group / "cgroup.procs").read_text().split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
    for group in [*groups, root]:
        wait_for(lambda group=group: "populated 0" in (group / "cgroup.events").read_text(), 30, f"{group} to empty")
        group.rmdir()


def test_cgroup_room_names_the_tightest_limit_above_a_process(cgroup_root: Path, workloads: Workloads) -> None:
    """What a CUDA checkpoint's host copy of VRAM may take (host/hostmemory.py): the least room
    under any memory.max or memory.high above the process, less a reserve, naming that group."""
    mount = cgroup_root.parent
    if "memory" not in (mount / "cgroup.subtree_control").read_text().split():
        pytest.skip(f"{mount} has no memory controller for its children")
    inner = cgroup_root / "inner"
    inner.mkdir(parents=True)
    (cgroup_root / "cgroup.subtree_control").write_text("+memory")
    pid, _ = workloads.start("ticker.py")
    assert cgroup_room(pid) is None or not cgroup_room(pid)[1].startswith(f"cgroup /{cgroup_root.name}")
    (inner / "cgroup.procs").write_text(str(pid))
    (cgroup_root / "memory.max").write_text(str(2 << 30))
    (inner / "memory.max").write_text(str(1 << 30))
    room, where = cgroup_room(pid)  # type: ignore[misc]
    assert where == f"cgroup /{cgroup_root.name}/inner (memory.max {1 << 30})"
    assert (1 << 30) - GROUP_RESERVE - (16 << 20) < room <= (1 << 30) - GROUP_RESERVE
    (inner / "memory.high").write_text(str(768 << 20))  # throttling counts as a limit too
    room, where = cgroup_room(pid)  # type: ignore[misc]
    assert where == f"cgroup /{cgroup_root.name}/inner (memory.high {768 << 20})" and room <= (768 << 20) - GROUP_RESERVE
    (inner / "memory.high").write_text("max")
    (inner / "memory.max").write_text("max")
    room, where = cgroup_room(pid)  # type: ignore[misc]
    assert where == f"cgroup /{cgroup_root.name} (memory.max {2 << 30})" and room <= (2 << 30) - GROUP_RESERVE


@pytest.fixture
def cg_daemon(tmp_path: Path, cgroup_root: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path, ("--cgroup-root", str(cgroup_root))).start()
    yield d
    d.stop()



def _tasks_cgroups(pid: int) -> set[str]:
    """The cgroup v2 path of every thread of ``pid``."""
    return {cgroup_of(f"{pid}/task/{tid}") for tid in os.listdir(f"/proc/{pid}/task")}


def _available(cgroup_root: Path, controller: str) -> None:
    """Skip unless the hierarchy above the delegated root offers ``controller``."""
    offered = (cgroup_root.parent / "cgroup.controllers").read_text().split()
    if controller not in offered:
        pytest.skip(f"the {controller} controller is not available in the cgroup2 hierarchy here "
                    f"({cgroup_root.parent}/cgroup.controllers: {' '.join(offered) or 'none'}), so "
                    f"{controller}.* files do not exist")


def test_whole_tree_restored_into_requested_cgroup(cg_daemon: Daemon, workloads: Workloads,
                                                   cgroup_root: Path) -> None:
    pid, report = workloads.start("forker.py")
    child_report = report.with_name(report.name + ".child")
    wait_for(child_report.exists, 10, "the child to report")
    child = int(child_report.read_text().split()[0])
    with cg_daemon.client() as c:
        snap = c.checkpoint(pid)
        assert snap.source_cgroup.path == cgroup_of(os.getpid())
        wait_for(lambda: gone(pid) and gone(child), 10, "both processes to stop")
        result = c.restore(snap.id, cgroup=CgroupSpec(path="inference/forker", create=True))

    expected = f"/{cgroup_root.name}/inference/forker"
    assert result.cgroup == expected
    assert sorted(result.pids) == sorted([pid, child])
    for restored in (pid, child):
        assert _tasks_cgroups(restored) == {expected}, restored
    assert sorted(int(p) for p in (cgroup_root / "inference/forker/cgroup.procs").read_text().split()) == sorted(
        [pid, child])
    assert cgroup_of(cg_daemon.proc.pid) != expected  # type: ignore[union-attr]
    assert ask(pid, report)[0] == str(pid)
    c_pid, c_ppid, _ = ask(child, child_report)
    assert (int(c_pid), int(c_ppid)) == (child, pid)


def test_checkpoint_records_source_cgroup_and_limits(cg_daemon: Daemon, workloads: Workloads,
                                                     cgroup_root: Path) -> None:
    source = cgroup_root / "source"
    source.mkdir(parents=True)
    pid, _ = workloads.start("memhold.py", "4")
    (source / "cgroup.procs").write_text(str(pid))
    with cg_daemon.client() as c:
        snap = c.checkpoint(pid, leave_running=True)
    assert snap.source_cgroup.path == f"/{cgroup_root.name}/source"
    present = {name: (source / name).read_text().strip()
               for name in ("memory.max", "cpu.max", "pids.max", "cpuset.cpus", "cpuset.mems")
               if (source / name).exists()}
    assert dict(snap.source_cgroup.limits) == present


def test_existing_group_needs_create(cg_daemon: Daemon, workloads: Workloads, cgroup_root: Path) -> None:
    pid, _ = workloads.start("memhold.py", "4")
    with cg_daemon.client() as c:
        snap = c.checkpoint(pid)
        wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
        err = error_of(lambda: c.restore(snap.id, cgroup=CgroupSpec(path="missing")))
        assert err.code == grpc.StatusCode.FAILED_PRECONDITION and err.error_class == "CgroupFailed"
        assert "does not exist" in err.message and gone(pid)
        (cgroup_root / "ready").mkdir(parents=True)
        assert c.restore(snap.id, cgroup=CgroupSpec(path="ready")).cgroup == f"/{cgroup_root.name}/ready"
    assert cgroup_of(pid) == f"/{cgroup_root.name}/ready"


def test_failed_restore_removes_the_groups_it_created(cg_daemon: Daemon, workloads: Workloads,
                                                      cgroup_root: Path) -> None:
    pid, _ = workloads.start("memhold.py", "4")
    with cg_daemon.client() as c:
        snap = c.checkpoint(pid)
        wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
        err = error_of(lambda: c.restore(snap.id, post_restore_hook=["false"],
                                       cgroup=CgroupSpec(path="team/hookfail", create=True)))
    assert err.error_class == "HookFailed"
    wait_for(lambda: gone(pid), 10, "the restored tree to be killed")
    assert not (cgroup_root / "team").exists()


def _groups_at(mount: Path) -> set[str]:
    """The groups at the top of the hierarchy, but those other tests and pods make meanwhile
    (scripts/test.sh runs two test files at a time)."""
    return {name for name in os.listdir(mount) if not name.startswith(("snapd-test-", "libpod"))}


@pytest.mark.parametrize(
    "path",
    ["../escape", "/sys/fs/cgroup", "a/../../b", "..", ".", "a/./b", "a//b", "a/", "a b", "a\0b", "é",
     "x" * 65, "/".join("a" * 9), "cgroup.procs", "memory.max", ".hidden", "-dash"],
)
def test_cgroup_path_escapes_are_invalid_argument(cg_daemon: Daemon, cgroup_root: Path, path: str) -> None:
    before = _groups_at(cgroup_root.parent)
    with cg_daemon.client() as c:
        err = error_of(lambda: c.restore("any-snapshot", cgroup=CgroupSpec(path=path, create=True)))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.message.startswith("invalid cgroup.path:")
    assert _groups_at(cgroup_root.parent) == before and not cgroup_root.exists()


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (CgroupSpec(path="a", cpu_max="lots"), "cgroup.cpu_max"),
        (CgroupSpec(path="a", cpu_max="100 100000"), "cgroup.cpu_max"),
        (CgroupSpec(path="a", pids_max=10**9), "cgroup.pids_max"),
        (CgroupSpec(path="a", cpuset_cpus="0-3;rm"), "cgroup.cpuset_cpus"),
        (CgroupSpec(path="", create=True), "cgroup.path"),
    ],
)
def test_malformed_limits_are_invalid_argument(cg_daemon: Daemon, spec: CgroupSpec, field: str) -> None:
    with cg_daemon.client() as c:
        err = error_of(lambda: c.restore("any-snapshot", cgroup=spec))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.message.startswith(f"invalid {field}:")


def test_limit_without_its_controller_is_refused_clearly(cg_daemon: Daemon, workloads: Workloads,
                                                         cgroup_root: Path) -> None:
    offered = (cgroup_root.parent / "cgroup.controllers").read_text().split()
    if "memory" in offered:
        pytest.skip("this host's cgroup2 hierarchy has the memory controller; the refusal needs one without it")
    pid, _ = workloads.start("memhold.py", "4")
    with cg_daemon.client() as c:
        snap = c.checkpoint(pid)
        wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
        err = error_of(lambda: c.restore(snap.id, cgroup=CgroupSpec(path="lim", create=True, memory_max_bytes=1 << 30)))
    assert err.error_class == "CgroupFailed" and "controller(s) memory not available" in err.message
    assert gone(pid) and not (cgroup_root / "lim").exists()


@pytest.mark.parametrize(
    ("controller", "spec_fields", "files"),
    [
        ("memory", {"memory_max_bytes": 1 << 30}, {"memory.max": str(1 << 30)}),
        ("cpu", {"cpu_max": "200000 100000"}, {"cpu.max": "200000 100000"}),
        ("pids", {"pids_max": 64}, {"pids.max": "64"}),
        ("cpuset", {"cpuset_cpus": "0", "cpuset_mems": "0"}, {"cpuset.cpus": "0", "cpuset.mems": "0"}),
    ],
)
def test_limits_are_written_before_the_tree_arrives(cg_daemon: Daemon, workloads: Workloads, cgroup_root: Path,
                                                    controller: str, spec_fields: dict, files: dict) -> None:
    _available(cgroup_root, controller)
    pid, report = workloads.start("memhold.py", "16")
    _, digest, _ = report.read_text().split()
    with cg_daemon.client() as c:
        snap = c.checkpoint(pid)
        wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
        result = c.restore(snap.id, cgroup=CgroupSpec(path=f"lim/{controller}", create=True, **spec_fields))
    group = cgroup_root / "lim" / controller
    for name, value in files.items():
        assert (group / name).read_text().strip() == value
    assert _tasks_cgroups(pid) == {result.cgroup}
    assert ask(pid, report)[1] == digest


@pytest.mark.parametrize("resource", ["memory", "pids"])
def test_too_small_cgroup_is_refused_up_front_with_the_numbers(cg_daemon: Daemon, workloads: Workloads,
                                                               cgroup_root: Path, resource: str) -> None:
    _available(cgroup_root, resource)
    pid, _ = workloads.start("threads.py", "4")
    with cg_daemon.client() as c:
        snap = c.checkpoint(pid)
        wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
        half = snap.raw_bytes // 2
        spec = (CgroupSpec(path="small", create=True, memory_max_bytes=half) if resource == "memory"
                else CgroupSpec(path="small", create=True, pids_max=3))
        err = error_of(lambda: c.restore(snap.id, cgroup=spec))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION and err.error_class == "CgroupTooSmall"
    if resource == "memory":
        assert f"needs {snap.raw_bytes} bytes" in err.message and f"memory.max {half} " in err.message
    else:
        assert "needs 6 tasks" in err.message and "pids.max 3" in err.message
    assert gone(pid) and not (cgroup_root / "small").exists()


@pytest.mark.parametrize("placed", [True, False], ids=["in-cgroup", "no-cgroup"])
def test_restored_tree_outlives_daemon_kill_and_restart(cg_daemon: Daemon, workloads: Workloads,
                                                        cgroup_root: Path, placed: bool) -> None:
    pid, report = workloads.start("memhold.py", "8")
    _, digest, _ = report.read_text().split()
    with cg_daemon.client() as c:
        snap = c.checkpoint(pid)
        wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
        result = c.restore(snap.id, cgroup=CgroupSpec(path="survivor", create=True) if placed else None)
    where = cgroup_of(pid)
    assert cg_daemon.proc is not None
    cg_daemon.proc.kill()
    cg_daemon.proc.wait()
    time.sleep(0.5)
    assert not gone(pid) and ask(pid, report)[1] == digest and cgroup_of(pid) == where
    if placed:
        assert where == result.cgroup
    cg_daemon.start()
    assert cg_daemon.stop() == 0
    time.sleep(0.5)
    assert not gone(pid) and ask(pid, report)[1] == digest
    cg_daemon.start()
    with cg_daemon.client() as c:
        assert c.status().pid == cg_daemon.proc.pid
    assert ask(pid, report)[1] == digest


def test_cgroup_root_must_be_below_the_mount(tmp_path: Path) -> None:
    mount = cgroup2_mount()
    if mount is None:
        pytest.skip("no cgroup2 hierarchy is mounted on this host")
    d = Daemon(tmp_path, ("--cgroup-root", str(mount)))
    out = subprocess.run(d.cli_args(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 43 and "is not a group below the cgroup2 mount" in out.stderr
