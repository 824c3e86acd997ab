"""Post-copy restore (restore_overlap): the tree runs while snapd fills its memory through
the userfaultfds CRIU's lazy pages hand over (real CRIU, real processes)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from faultlib import biggest_chunk, damage_chunk
from harness import Daemon, Workloads, ask, gone, restore_at_once, serving, snapd, wait_for
from snapd.v1 import snapd_pb2 as pb
from snapd_client import SnapdClientError
from snapd_daemon.errors import Cancelled
from snapd_daemon.restore.delivery import Delivery, Route, Target
from snapd_daemon.restore.fillplan import FillPlan
from snapd_daemon.restore.postcopy import PostCopy
from snapd_daemon.store.local import LocalStore
from snapd_daemon.store.model import ZERO_CHUNK, ChunkRef
from test_all_or_nothing import held_restore
from test_batched_delivery import manifest
from test_replicas import Reports, start_run, worker_of
from test_uffd import P, missing_region, read_page


@pytest.fixture
def lazy(tmp_path: Path) -> Iterator[Daemon]:
    with serving(tmp_path / "lazy", "--restore-overlap", "always", "--slow-phase-seconds", "0.01") as d:
        yield d


@pytest.fixture
def stopped(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon that writes memory into the stopped tree through the uffds (inject_method uffd)."""
    with serving(tmp_path / "stopped", "--inject-method", "uffd") as d:
        yield d


def _events(daemon: Daemon, event: str) -> list[dict[str, object]]:
    return [json.loads(ln) for ln in daemon.log.read_text().splitlines() if f'"event": "{event}"' in ln]


def _moved(daemon: Daemon, pid: int, said: Path) -> Path:
    """Checkpoint ``pid`` (it stops), restore it, and wait for what the restored copy writes to
    ``said`` once resumed (anything there before, the source's, removed first)."""
    with daemon.client() as c:
        snap = c.checkpoint(pid)
        wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
        said.unlink(missing_ok=True)
        c.restore(snap.id)
    wait_for(said.exists, 60, f"the restored workload to write {said.name}")
    return said


def test_the_fill_takes_batches_in_address_order_from_where_a_fault_moves_it() -> None:
    batches = [[Route(ChunkRef("c", 8192), "pages-1.img", i * 8192, [Target(0, 8192, 0x10000 + i * 8192, pid=7)])]
               for i in range(6)]
    plan = FillPlan(batches)
    assert [plan.next(), plan.next()] == [0, 1]
    plan.seek(plan.batch_at(7, 0x10000 + 4 * 8192 + 100))  # type: ignore[arg-type]  # a fault in batch 4
    assert [plan.next(), plan.next(), plan.next(), plan.next(), plan.next()] == [4, 5, 2, 3, 6]
    assert plan.batch_at(7, 0x10000 - 1) is None and plan.batch_at(8, 0x10000) is None


def test_while_criu_restores_the_fill_takes_only_what_faults_ask_for_and_ends_when_the_delivery_stops() -> None:
    batches = [[Route(ChunkRef("c", 8192), "pages-1.img", i * 8192, [Target(0, 8192, 0x10000 + i * 8192, pid=7)])]
               for i in range(4)]
    post, stop = PostCopy("snap"), threading.Event()
    try:
        take = post.order(batches, stop)
        post.plan.want(2)  # type: ignore[union-attr]  # a fault in batch 2 while CRIU restores
        assert take() == 2
        stop.set()  # another fill thread failed: one waiting for a batch gives up (none left)
        assert take() == 4
        post.plan.untake(2)  # type: ignore[union-attr]  # part of it was not ready: taken again after CRIU
        post.received({})
        assert [take() for _ in range(5)] == [0, 1, 2, 3, 4]
    finally:
        post.close()


def test_a_fill_that_fails_while_criu_restores_leaves_no_fault_waiting_for_it(tmp_path: Path) -> None:
    """Until CRIU returns, a fault in planned memory (CRIU's restorer reading a thread's rseq
    area) waits for the fill. A fill that fails then (a cancel) closes the uffds it holds,
    and each one CRIU sends after, so those faults read zeros in a tree that will never run,
    and CRIU goes on to its end; the restore's failure is the fill's."""
    store = LocalStore(tmp_path / "state", 2)
    store.recover()
    (early, early_at, _a), (late, late_at, _b) = missing_region(4), missing_region(4)
    routes = [Route(ChunkRef(ZERO_CHUNK, 4 * P), "pages-1.img", 0, [Target(0, 4 * P, at, pid=pid)])
              for pid, at in ((7, early_at), (8, late_at))]
    cancelled, aborted = threading.Event(), threading.Event()

    def check() -> None:
        if cancelled.is_set():
            raise Cancelled(operation_id="op-1", why="asked", undone="nothing was restored")

    post = PostCopy("snap")
    try:
        post.receive(7, early)  # CRIU sent one task's uffd before the failure, the other's after
        post.start(Delivery(store, manifest(), 2, readahead_bytes=0), routes, lambda _done: None, check, None,
                   abort=aborted.set)
        cancelled.set()
        wait_for(aborted.is_set, 10, "the fill to fail")
        post.receive(8, late)
        for at in (early_at, late_at):
            reader, out = read_page(at)
            reader.join(10)
            assert not reader.is_alive(), f"a fault at {at:#x} still waits for the fill that failed"
            assert out.raw == bytes(P)
        with pytest.raises(Cancelled):
            post.received({7: 107, 8: 108})
    finally:
        post.close()


def test_a_region_filled_while_the_tree_runs_comes_back_whole(lazy: Daemon, workloads: Workloads) -> None:
    """Random data, zero runs and holes never touched: every byte as at checkpoint, read by the
    process itself from the moment it runs (while the fill runs), and the fill's figures logged."""
    pid, report = workloads.start("lazymem.py", "384", "1", "plain")
    digest = report.read_text().split()[1]
    resumed = _moved(lazy, pid, Path(f"{report}.resumed"))  # its digest of the region, read the moment it ran
    assert resumed.read_text().split() == [str(pid), digest]
    assert ask(pid, report)[1] == digest
    [done] = _events(lazy, "restore.postcopy")
    assert int(done["fill_bytes"]) > 256 << 20  # type: ignore[call-overload]
    names = [e["event"] for e in (json.loads(ln) for ln in lazy.log.read_text().splitlines() if ln.startswith("{"))]
    # the uffds closed the moment the fill was whole, before the restore's end waited on it
    assert names.index("restore.resume") < names.index("restore.postcopy_filled") < names.index("restore.postcopy")
    [filled] = _events(lazy, "restore.postcopy_filled")
    assert filled["fill_bytes"] == filled["planned_bytes"] == done["fill_bytes"] and not filled["faults_deferred"]
    # waiting for the fill took longer than 0.01 s: what the tree's threads waited on, and the fill's figures
    slow = [e for e in _events(lazy, "slow_phase") if e["phase"] == "fill"]
    assert slow and any(t.startswith(f"{pid}/{pid} ") for t in slow[0]["threads"])  # type: ignore[attr-defined]
    assert all(e["op"] == done["op"] and e["planned_bytes"] == done["planned_bytes"] for e in slow)


def test_the_uffd_method_fills_the_stopped_tree_whole_before_it_runs(stopped: Daemon, workloads: Workloads) -> None:
    """inject_method uffd: the same fill, through the uffds CRIU's lazy pages hand over, ended and
    the uffds closed before the tree gets SIGCONT; what it reads the moment it runs is whole."""
    checks = {c["name"]: c for c in json.loads(snapd(stopped, "status", "--json").stdout)["checks"]}
    assert checks["userfaultfd"]["ok"] and "inject_method uffd, restore_overlap never in effect" in \
        checks["userfaultfd"]["detail"]
    pid, report = workloads.start("lazymem.py", "384", "1", "plain")
    digest = report.read_text().split()[1]
    resumed = _moved(stopped, pid, Path(f"{report}.resumed"))
    assert resumed.read_text().split() == [str(pid), digest]
    names = [e["event"] for e in (json.loads(ln) for ln in stopped.log.read_text().splitlines() if ln.startswith("{"))]
    assert names.index("restore.postcopy_filled") < names.index("restore.postcopy") < names.index("restore.resume")
    [done] = _events(stopped, "restore.postcopy")
    assert done["fill_bytes"] == done["planned_bytes"] and "faults_data" not in done  # nothing ran to fault


def test_the_uffd_method_with_a_corrupt_chunk_fails_before_the_tree_ever_runs(stopped: Daemon,
                                                                                 workloads: Workloads) -> None:
    pid, report = workloads.start("lazymem.py", "64", "1", "plain")
    with stopped.client() as c:
        snap = c.checkpoint(pid)
    wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
    damaged = damage_chunk(biggest_chunk(stopped.state_dir), "flip")
    with stopped.client() as c, pytest.raises(SnapdClientError) as info:
        c.restore(snap.id)
    assert info.value.code == grpc.StatusCode.DATA_LOSS and damaged in info.value.message
    assert gone(pid) and not Path(f"{report}.resumed").exists()  # killed stopped: it never ran
    assert not _events(stopped, "restore.resume") and list((stopped.state_dir / "holds").glob("*.json")) == []


def test_a_locked_region_is_injected_into_the_stopped_tree(lazy: Daemon, workloads: Workloads) -> None:
    """CRIU's lazy pages register no MAP_LOCKED mapping: such a restore injects as before."""
    pid, report = workloads.start("lazymem.py", "32", "1", "locked")
    digest = report.read_text().split()[1]
    resumed = _moved(lazy, pid, Path(f"{report}.resumed"))
    assert resumed.read_text().split() == [str(pid), digest]
    [unused] = _events(lazy, "restore.postcopy_unused")
    assert "is not registered by CRIU's lazy pages" in str(unused["reason"]) and not _events(lazy, "restore.postcopy")


def test_unmap_dontneed_remap_and_fork_on_resume_see_what_they_must(lazy: Daemon, workloads: Workloads) -> None:
    """The moment it runs, the tree drops, moves and forks parts of memory not filled yet: a dropped
    part reads zeros, a moved one its data, a child forked then the checkpoint's bytes."""
    pid, report = workloads.start("lazymem.py", "256", "32", "events")
    digest = report.read_text().split()[1]
    events = _moved(lazy, pid, Path(f"{report}.events"))
    assert events.read_text().split() == [str(pid), "dontneed_zero=1", "remapped_intact=1", "child_quarter=1",
                                          "child_region=1"]
    assert ask(pid, report)[1] == digest
    [done] = _events(lazy, "restore.postcopy")
    assert done["events_fork"] == 1 and done["events_remap"] == 1  # the tree's changes reached the fill


def test_a_corrupt_chunk_fails_the_restore_and_kills_the_running_tree(lazy: Daemon, workloads: Workloads) -> None:
    pid, _ = workloads.start("lazymem.py", "64", "1", "plain")
    with lazy.client() as c:
        snap = c.checkpoint(pid)
    wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
    damaged = damage_chunk(biggest_chunk(lazy.state_dir), "flip")  # a random 2 MiB piece of the region
    with lazy.client() as c, pytest.raises(SnapdClientError) as info:
        c.restore(snap.id)
    assert info.value.code == grpc.StatusCode.DATA_LOSS and damaged in info.value.message
    assert gone(pid)  # killed, none of it left blocked on a page
    with lazy.client() as c:
        wait_for(lambda: c.status().operations_in_flight == 0, 30, "the restore to end")
    assert list((lazy.state_dir / "holds").glob("*.json")) == []


def test_a_cancel_before_the_commit_kills_the_tree(lazy: Daemon, workloads: Workloads) -> None:
    pid, report = workloads.start("lazymem.py", "64", "1", "plain")
    digest = report.read_text().split()[1]
    with lazy.client() as c:
        snap = c.checkpoint(pid)
    wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
    failure: list[SnapdClientError] = []
    asked = threading.Event()

    def progress(p: pb.Progress) -> None:
        if p.phase == pb.PHASE_RESTORE and not asked.is_set():
            asked.set()
            with lazy.client() as other:
                other.cancel(p.operation_id)

    def restore() -> None:
        with lazy.client() as c:
            try:
                c.restore(snap.id, on_progress=progress)
            except SnapdClientError as exc:
                failure.append(exc)

    t = threading.Thread(target=restore)
    t.start()
    t.join(120)
    assert failure and failure[0].code == grpc.StatusCode.CANCELLED
    wait_for(lambda: gone(pid), 10, "the cancelled restore's tree to be killed")
    with lazy.client() as c:  # and the snapshot restores whole afterwards
        c.restore(snap.id)
    assert ask(pid, report)[1] == digest


def test_a_replicable_snapshot_restores_twice_side_by_side(lazy: Daemon, tmp_path: Path) -> None:
    reports = Reports(tmp_path / "reports.sock")
    init = start_run(tmp_path, reports)
    digest = reports.ask(worker_of(init))[0]
    with lazy.client() as c:
        snap = c.checkpoint(init)
    wait_for(lambda: gone(init), 30, "the source to be stopped")
    outcomes = restore_at_once(lazy.target, snap.id, 2)
    try:
        roots = [o.root_pid for o in outcomes]  # type: ignore[attr-defined]
        assert len(set(roots)) == 2
        for root in roots:
            assert reports.ask(worker_of(root))[0] == digest
        assert len(_events(lazy, "restore.postcopy")) == 2
    finally:  # the replicas are the daemon's instances: stopped, not left behind
        with lazy.client() as c:
            for o in outcomes:
                if not isinstance(o, SnapdClientError):
                    c.stop_instance(o.instance_id)  # type: ignore[attr-defined]
    for root in roots:
        wait_for(lambda r=root: gone(r), 30, "a stopped replica to end")


def test_sigkill_of_the_daemon_during_the_fill_is_undone_at_next_start(lazy: Daemon, workloads: Workloads) -> None:
    """The fill held on a chunk whose read blocks (a FIFO), the daemon SIGKILLed: its next start
    kills the tree its journal names (which may have run, on zeros, since the uffds closed with
    the daemon), and the snapshot restores whole again."""
    with held_restore(lazy, workloads, 2025) as held:
        assert lazy.proc is not None
        lazy.proc.kill()
        lazy.proc.wait()
        held.call.join()
    lazy.start()
    wait_for(lambda: gone(held.pid), 15, "the held restore's tree to be killed")
    with lazy.client() as c:
        assert c.status().recovered_operations >= 1
        c.restore(held.snapshot, wait_for_exit_seconds=10)
    assert ask(held.pid, held.report)[1] == held.digest
    assert len(_events(lazy, "restore.postcopy")) == 1  # the second restore's: post-copy too


@pytest.mark.parametrize("daemon", ["stopped", "lazy"])
def test_threads_whose_rseq_areas_were_cut_out_come_back(daemon: str, request: pytest.FixtureRequest,
                                                         workloads: Workloads) -> None:
    """CRIU's restorer registers each thread's rseq area (glibc's, at the top of the thread's
    stack, which is cut out) after the uffds were sent and before CRIU returns: the kernel reads
    it there, so the fill must already serve faults while CRIU restores, or CRIU waits for ever."""
    d: Daemon = request.getfixturevalue(daemon)
    pid, report = workloads.start("threads.py", "8")
    with d.client() as c:
        snap = c.checkpoint(pid)
        wait_for(lambda: gone(pid), 10, "the checkpointed process to stop")
        c.restore(snap.id, timeout=60)
    first = [int(x) for x in ask(pid, report)]
    assert first[1] == 9
    wait_for(lambda: [int(x) for x in ask(pid, report)][2:] > first[2:], 10, "counters to advance")


@pytest.mark.parametrize("setting", [("--inject-method", "uffd"), ("--restore-overlap", "always")])
def test_a_root_registered_only_after_its_threaded_child_restored_comes_back_whole(
        setting: tuple[str, str], tmp_path: Path, workloads: Workloads) -> None:
    """CRIU registers the root's ranges with its uffd only once every other task has restored,
    the child's threads (and so their rseq areas, served by the fill meanwhile) included: a
    fill that took the root's batches before CRIU returned was refused there (ENOENT) with
    every fill thread held on it while the child waited on its pages (seen on an H100 with a
    two-process GPU server; one fill thread here, so that nothing else serves the child);
    the root's memory comes back whole."""
    pid, report = workloads.start("treethreads.py", "96", "4")
    said = Path(f"{report}.child")
    wait_for(said.exists, 10, "the child to report")
    digest, child = report.read_text().split()[1], int(said.read_text().split()[0])
    with serving(tmp_path / "uffd", *setting, "--io-threads", "1") as d, d.client() as c:
        snap = c.checkpoint(pid)
        wait_for(lambda: gone(pid) and gone(child), 10, "the tree to stop")
        c.restore(snap.id, timeout=60)
    assert ask(pid, report)[1] == digest
    first = [int(x) for x in ask(child, said)]
    assert first[1] == 5
    wait_for(lambda: [int(x) for x in ask(child, said)][2:] > first[2:], 10, "the child's counters to advance")
