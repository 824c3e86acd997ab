"""Restore: snapshot -> live process tree with its original pids, all or nothing.

A snapshot whose root was the init of a pid namespace of its own (``snapd run``)
is restored into a fresh pid namespace each time: its pids are the recorded
ones inside, new ones on the host, so any number of restores of it may run
at once (replicas); everything below then names the tree by its host pids
(pidmap.py). With a network namespace of its own, each copy's listening ports
are published on free host ports (host/portfwd.py) before the post-restore hook.

A ``RestoreRun`` goes through its phases in order, one method each:
  1. ``claim``: find the snapshot, claim its pids and itself (shared with other restores of a
     replicable snapshot), open the cgroup placement (or the sandbox and a group below its cgroup:
     restore/into.py), choose the GPUs by the restore's policy and reserve their memory
     (runtime/gpuleases.py) until the restore ends, check that the pids are free;
  2. ``journal``: write the restore's hold record (runtime/holds.py, KILL) before
     anything is created, so that a daemon killed from here on is followed, at
     its next start, by killing whatever this restore created;
  3. ``prepare``: start reading ahead the file pages the tree had mapped in
     (host/filepages.py); write the snapshot's images, verified, into a staging
     directory (RAM when it has room) with the large regions cut out (images.py);
     a snapshot only the remote tier holds is pulled meanwhile, its chunks
     read as they arrive (remote/ondemand.py), and published as a local
     snapshot once the tree runs;
  4. ``criu``: CRIU restores from there and leaves every task stopped (with
     post-copy, ``postcopy``, it first sends each task's userfaultfd: criu/lazy.py);
     the record then names the tree by start time, and the tree becomes an
     instance in ``starting`` (runtime/instances.py), ``running`` once the
     restore returns, ``exited`` with the failure when it is undone;
     a tree restored into a sandbox must be in the sandbox's namespaces;
  5. ``inject``: snapd writes the cut-out regions into the stopped processes,
     each chunk verified against its hash (delivery.py), with process_vm_writev or
     (``inject_method`` uffd) through the uffds, a fill started before step 4 (CRIU's
     restorer faults on the tree's memory) and ended before step 6; with post-copy
     (``restore_overlap``) it is only checked here (postcopy.py);
  6. ``resume``: SIGCONT to the tasks that were running at checkpoint (a task
     stopped then stays stopped) — nothing of the tree ran before this point;
  7. ``resume_gpu``: the GPU side is restored and unlocked (with post-copy while
     the fill runs, ``overlap.settle`` waiting for its end after); then the ports are
     published (``publish``), the post-restore hook runs and the snapshot's readiness
     probe is waited for and its answer verified, or left to the background (readiness.py).
Undo: staging is always discarded; any failure from the moment CRIU returns
(a corrupt or missing chunk, a refused write, a cancelled call, a task that
died, the GPU, the hook) SIGKILLs the whole tree, identified as the record
names it (never a process that took one of the pids since); a failure inside
CRIU leaves CRIU to kill what it made (a uffd fill failing meanwhile kills CRIU, or keeps
it from starting, and the failure is the fill's). The record is cleared at the end,
unless a process of the tree survived the kill: then the next start tries.
The store lock is held shared from prepare to the end of the injection (or fill), so a
waiting gc never holds a stopped tree up between the two (for a snapshot pulled
on demand, from the first fetch until its copy is published, after the resume).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import psutil
import structlog

from snapd_daemon import metrics
from snapd_daemon.criu import actions, lazy
from snapd_daemon.errors import (
    Cancelled,
    PublishFailed,
    RestoreAborted,
    RestoreSpaceFull,
    SnapdError,
    SnapshotNotFound,
    StoreFull,
    describe_exception,
)
from snapd_daemon.host import filepages, gpu, linkremap, portfwd, stdio
from snapd_daemon.host.cgroups import Cgroup, Needs
from snapd_daemon.host.gpuplace import Policy
from snapd_daemon.host.sandbox import Sandbox
from snapd_daemon.remote.ondemand import OnDemand
from snapd_daemon.restore import images, into, overlap, pidmap
from snapd_daemon.restore.delivery import Delivery, Readahead
from snapd_daemon.restore.pids import ensure_pids_free, kill_tree, parents
from snapd_daemon.restore.postcopy import PostCopy
from snapd_daemon.restore.readiness import Readiness
from snapd_daemon.restore.spec import RestoreOutcome, RestoreSpec
from snapd_daemon.runtime import Runtime, criulogs
from snapd_daemon.runtime.cancel import CancelToken
from snapd_daemon.runtime.holds import KILL, HoldRecord, kill_restored
from snapd_daemon.runtime.operation import OperationRun
from snapd_daemon.runtime.progress import Phase, ProgressEvent, Reporter
from snapd_daemon.runtime.slowphase import SlowPhase
from snapd_daemon.runtime.staging import Staging
from snapd_daemon.snapshots.manifest import Manifest
from snapd_daemon.store import oserrors

log = structlog.get_logger()
# how long a failed restore waits for its killed tree's root to be reaped
_REAP_SECONDS = 10.0


class RestoreRun(OperationRun):
    def __init__(self, rt: Runtime, spec: RestoreSpec, operation_id: str, report: Reporter,
                 cancel: CancelToken) -> None:
        super().__init__(rt, operation_id, report, cancel)
        self.spec = spec
        self.remote: OnDemand | None = None
        try:
            self.manifest: Manifest = rt.catalog.get(spec.ref)
        except SnapshotNotFound:
            if rt.remote is None:
                raise
            self.remote = OnDemand.find(rt, spec.ref, report, cancel.check)
            self.manifest = self.remote.manifest
        self.delivery = Delivery(self.remote or rt.store, self.manifest, rt.settings.io_threads)
        self.pairs: dict[int, list[tuple[bytes, bytes]]] = {}
        self.gpus: dict[str, str] = {}
        # checkpoint pid -> host pid of the restored copy (known once CRIU has returned)
        self.hosts: dict[int, int] = {}
        self.published: dict[int, str] = {}
        self.staging: Staging
        self.root = 0
        self.log_path: Path | None = None
        self.since = time.time()
        self.record = HoldRecord()
        self.keep_record = False
        self.instance_id = ""
        self.sandbox: Sandbox | None = None
        # pids of the killed tree still held when the undo ended (see ``_kill_tree``)
        self.held_pids: list[int] = []
        self.readiness = Readiness(self.manifest, spec.wait_ready, spec.verify, self.started)

    def execute(self) -> RestoreOutcome:
        m = self.manifest
        needs = Needs(m.id, m.raw_bytes, sum(p.threads for p in m.processes) + 1)
        with (self.rt.registry.claim("restore", self.op, pids=() if m.replicable else m.pids, snapshot_id=m.id,
                                     shared=m.replicable),
              into.target(self.rt, m, self.spec.into, self.spec.cgroup, needs, self.op) as (self.sandbox, cgroup),
              ExitStack() as leased):
            self.claim(leased)
            with ExitStack() as always:
                always.callback(self._clear_record)
                self.journal()
                with ExitStack() as undo:
                    # no gc takes a chunk this restore reads until its memory is in place; ``reading``
                    # ends its readahead with it
                    reading = undo.enter_context(ExitStack())
                    reading.enter_context(self.rt.store.lock.shared())
                    if self.remote is not None:  # fetching starts; it outlives the lock (publish)
                        always.enter_context(self.remote)
                    self.staging = self.rt.scratch.new(self.op, needed=self.manifest.raw_bytes)
                    with ExitStack() as staged:
                        staged.callback(self.rt.scratch.discard, self.staging)
                        self.cancel.check()
                        plan = self.prepare()
                        # the disk reads the injection's first chunks while CRIU restores the tree
                        ahead = reading.enter_context(self.delivery.read_ahead(plan.memory))
                        self.cancel.check()
                        post = overlap.choose(self.rt.settings.restore_overlap, self.rt.settings.inject_method,
                                              self.rt.criu, self.manifest, plan.memory, self.staging.images, undo)
                        if post is not None:  # its fill serves the faults CRIU's restorer meets; its failure
                            post.start(self.delivery, plan.memory, self._injected(plan), self.cancel.check, ahead,
                                       abort=lambda: kill_restored(self.record))  # kills CRIU or the tree
                        with overlap.blamed(post):  # CRIU's failure, or the tree's death, that the fill's caused
                            self.criu(cgroup, undo, post)
                    post = self.inject(plan, ahead, post)
                    if post is None:
                        reading.close()
                    self.cancel.commit()  # the commit point: a cancel until here kills the stopped tree
                    self.resume()
                    self.resume_gpu(post)
                    if post is not None:  # every planned byte in place, then the uffds closed
                        overlap.settle(post, self.report, plan.injected_bytes, self._slow("fill", post))
                        reading.close()
                    self.publish(undo)
                    self.post_hook()
                    self.readiness.settle(self.root, self.rt.instances, self.instance_id, self.report)
                    if self.sandbox:  # a pod deleted meanwhile: the undo kills the tree, not a success
                        self.sandbox.check_alive()
                    undo.pop_all()
                seconds = round(time.monotonic() - self.started, 3)
                log_path = self.log_path if any(e.writes for e in m.outward_stdio) else None
                placed = cgroup.proc_path if cgroup is not None else ""
                box = (self.sandbox.pid, self.sandbox.start_time, self.sandbox.cgroup) if self.sandbox else None
                self.rt.instances.running(
                    self.instance_id, ready_seconds=self.readiness.ready_seconds(seconds),
                    probed=self.readiness.probed, gpus=sorted(set(self.gpus.values())), cgroup=placed,
                    log_path=str(log_path or ""), published=self.published, sandbox=box)
                self.readiness.follow(self.rt.instances, self.root, self.instance_id)
                if self.remote is not None:
                    self.remote.publish()
        outcome = RestoreOutcome(
            snapshot_id=m.id, root_pid=self.root, pids=[self.hosts[p] for p in m.pids], seconds=seconds,
            log_path=log_path, published=self.published, gpus=self.gpus,
            pulled=self.remote.fetched if self.remote else (0, 0), instance_id=self.instance_id, cgroup=placed,
            ready_seconds=self.readiness.ready_seconds(seconds), verified=self.readiness.verified,
        )
        log.info("restore.done", snapshot=m.id, root_pid=self.root, seconds=outcome.seconds)
        return outcome

    # -- phases ---------------------------------------------------------------

    def claim(self, leased: ExitStack) -> None:
        """Re-read the snapshot now that it is claimed (an rm may have won; one pulled on demand
        is the bucket's), choose and lease GPUs (held until ``leased`` closes), check pids."""
        if self.remote is None:
            self.manifest = self.rt.catalog.get(self.manifest.id)
            self.delivery = Delivery(self.rt.store, self.manifest, self.rt.settings.io_threads)
        m = self.manifest
        if m.own_netns:
            self.rt.criu.require_ip_tool(f"restoring snapshot {m.id}, whose tree has a network namespace of its own,")
        if m.gpu:
            settings = self.rt.settings
            policy = Policy(self.spec.gpu_policy or settings.gpu_policy, settings.gpu_margin,
                            self.sandbox.gpus if self.sandbox else None)
            self.pairs, self.gpus = leased.enter_context(
                self.rt.gpu_leases.lease(self.op, m.id, m.gpu, self.spec.gpu_uuid_map, policy))
        if m.replicable:
            return  # its pids are those of a fresh pid namespace
        self.report(ProgressEvent(Phase.PREPARE, 0, m.raw_bytes, f"checking pids {m.pids}"))
        self.hosts = {pid: pid for pid in m.pids}
        ensure_pids_free(m, self.rt.settings.pid_wait_seconds if self.spec.wait_seconds is None
                         else self.spec.wait_seconds)

    def journal(self, processes: list[tuple[int, float]] | None = None, helper: tuple[int, float] = (0, 0.0)) -> None:
        """Write (or rewrite) the record that lets a restarted daemon kill this restore's tree."""
        m, hosts = self.manifest, self.hosts  # before CRIU a replica's pids are unknown: its CRIU covers it
        self.record = HoldRecord(
            processes=processes or [(pid, 0.0) for pid in hosts.values()],
            cuda_pids=[hosts[p] for p in m.gpu.cuda_pids if p in hosts] if m.gpu else [], action=KILL,
            names={hosts[p.pid]: p.name for p in m.processes if p.pid in hosts}, since=self.since, helper=helper,
        )
        with self.rt.store.translate_os_errors(m.raw_bytes):
            self.rt.journal.write(self.op, self.record)

    def prepare(self) -> images.FastRestore:
        m, settings = self.manifest, self.rt.settings
        filepages.warm(m.file_pages, settings.warm_file_bytes)  # CRIU and the resumed tree read these
        with metrics.phase("restore", "prepare"), oserrors.translated(self.staging.root.parent, m.raw_bytes):
            plan = images.prepare(
                self.delivery, m, self.staging.images, settings.inject_min_bytes,
                lambda done: self.report(ProgressEvent(Phase.PREPARE, done, m.raw_bytes)),
                huge_pages=settings.inject_huge_pages,
            )
        log.info("restore.prepared", criu_bytes=plan.kept_bytes, inject_bytes=plan.injected_bytes,
                 chunks_to_inject=len(plan.memory))
        if self.sandbox:
            into.check_images(m, self.staging.images)
        return plan

    def criu(self, cgroup: Cgroup | None, undo: ExitStack, post: PostCopy | None = None) -> None:
        """CRIU restores the tree, every task left stopped; from the moment it returns,
        ``undo`` kills the tree. With ``post``, CRIU sends each task's uffd to it."""
        m, rt = self.manifest, self.rt

        def place(helper: int) -> None:
            self.journal(helper=(helper, psutil.Process(helper).create_time()))
            if post is not None and post.failure is not None:  # failed before its abort could name CRIU
                raise post.failure  # CRIU, not yet asked, exits
            if cgroup is not None:
                cgroup.adopt(helper)

        self.report(ProgressEvent(Phase.RESTORE, 0, m.raw_bytes, "criu restore"))
        with metrics.phase("restore", "criu"), criulogs.kept(rt.settings.criu_log_dir(), self.op), \
                stdio.inherited_fds(
                m.outward_stdio, rt.settings.log_dir(), self.spec.log_name or f"{m.id}.log",
        ) as (inherit, self.log_path), linkremap.relinked(m.id, m.link_remap_files), \
                ExitStack() as lazy_stack:
            if post is not None:  # CRIU sends each task's uffd there (a task without one: ``post.received`` fails)
                lazy_stack.enter_context(lazy.listening(self.staging.work, post.receive))
            self.root = actions.restore(
                rt.criu, m.root_pid, self.staging.images, self.staging.work,
                shell_job=m.shell_job, log_level=rt.settings.criu_log_level, place=place, inherit=inherit,
                manage_cgroups=cgroup is None, tcp=self.spec.tcp if m.tcp_established else "",
                ext_unix_sk=m.ext_unix_sk, own_mntns=m.own_mntns, join=self.sandbox.join() if self.sandbox else (),
                lazy_pages=post is not None,
            )
            undo.callback(self._kill_tree)
            lazy_stack.close()  # CRIU has sent every uffd
        metrics.BYTES_READ.inc(m.raw_bytes)
        # the tree exists, every task stopped: name it by host pid and start time from now on
        self.hosts = pidmap.locate(m, self.root)
        try:
            started = [(pid, psutil.Process(pid).create_time()) for pid in self.hosts.values()]
        except psutil.NoSuchProcess as exc:
            raise RestoreAborted(snapshot_id=m.id, reason=f"pid {exc.pid} died right after CRIU restored it "
                                 "(killed from outside, or by the OOM killer?)") from exc
        self.journal(processes=started)
        self.instance_id = rt.instances.create(self.op, m.id, m.name,
                                               sorted(started, key=lambda p: p[0] != self.root)).id
        undo.push(self._instance_failed)  # before the kill (an ExitStack unwinds last in, first out)
        if self.sandbox:
            self.sandbox.check_joined(m.id, self.root)

    def inject(self, plan: images.FastRestore, ahead: Readahead | None, post: PostCopy | None) -> PostCopy | None:
        """Write the cut-out memory into the stopped tree (with ``post``, whose fill started before
        CRIU, through its uffds, which are closed then); a ``post`` that overlaps the resume is
        only checked, and returned."""
        if not plan.memory:
            return None
        total = plan.injected_bytes
        self.report(ProgressEvent(Phase.INJECT, 0, total, "writing memory" if post is None else "post-copy fill"))
        if post is not None:
            post.received({self.manifest.image_pid(p): h for p, h in self.hosts.items()})
            if not post.overlaps:
                overlap.settle(post, self.report, total, self._slow("fill", post))
            return post if post.overlaps else None
        with metrics.phase("restore", "inject"):
            try:
                self.delivery.run(pidmap.retarget(plan.memory, self.manifest, self.hosts), self._injected(plan),
                                  self.cancel.check, ahead, probe=False)  # read_ahead probed these chunks already
            except SnapdError:
                self.cancel.check()  # a cancel accepted meanwhile is the cause that counts
                raise

    def _injected(self, plan: images.FastRestore) -> Callable[[int], None]:
        return lambda done: self.report(ProgressEvent(Phase.INJECT, done, plan.injected_bytes))

    def resume(self) -> None:
        """Let the tree run: every task that was running at checkpoint."""
        running = [self.hosts[p.pid] for p in self.manifest.processes if not p.stopped]
        log.info("restore.resume", pids=running)
        for pid in running:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError as exc:
                raise RestoreAborted(snapshot_id=self.manifest.id,
                                     reason=f"pid {pid} died while stopped (killed from outside?)") from exc

    def resume_gpu(self, post: PostCopy | None) -> None:
        m = self.manifest
        if m.gpu:
            self.report(ProgressEvent(Phase.GPU_RESTORE, message=f"CUDA restore + unlock of {list(m.gpu.cuda_pids)}"))
            with metrics.phase("restore", "gpu-restore"), overlap.during(post), self._slow("gpu-restore", post):
                gpu.resume_restored(tuple(self.hosts[p] for p in m.gpu.cuda_pids),
                                    {self.hosts[p]: pairs for p, pairs in self.pairs.items()})

    def _slow(self, phase: str, post: PostCopy | None) -> SlowPhase:
        """Logs what the tree waits on while ``phase`` blocks past slow_phase_seconds (and the fill's progress)."""
        return SlowPhase(phase, self.rt.settings.slow_phase_seconds, lambda: [self.hosts[p] for p in self.manifest.pids],
                         post.figures.progress if post is not None else dict)

    def publish(self, undo: ExitStack) -> None:
        """Publish each port the tree listened on in its own network namespace on a free
        port of ``publish_host``; a relay ends with the tree, or with the undo."""
        m = self.manifest
        for port in m.ns_ports if m.own_netns else []:
            address = f"[{self.spec.publish_host}]:0" if ":" in self.spec.publish_host else f"{self.spec.publish_host}:0"
            try:
                relay = portfwd.publish(self.root, address, port)
            except portfwd.PublishError as exc:
                raise PublishFailed(port=port, pid=self.root, address=address, reason=str(exc)) from exc
            undo.callback(relay.end)
            self.published[port] = relay.address
        if self.published:
            log.info("restore.published", ports=self.published)

    def _kill_tree(self) -> None:
        """Undo: SIGKILL what this restore created; a survivor keeps the record for the next start,
        a pid still held after the wait (exiting, an unreaped zombie) is named by ``restore``.
        Once the tree is an instance, wait for its root to be reaped (by the daemon, its
        subreaper), so that the failed restore returns with the root's pid free."""
        outcome = kill_tree(self.record)
        self.held_pids = outcome.exiting
        if outcome.alive:
            self.keep_record = True
            log.error("restore.kill_failed", pids=outcome.alive)
        elif self.instance_id and not self.rt.instances.wait_ended(self.instance_id, _REAP_SECONDS):
            log.error("restore.root_not_reaped", instance=self.instance_id, root_pid=self.root)

    def _instance_failed(self, _kind: object, exc: BaseException | None, _tb: object) -> None:
        why = exc.message if isinstance(exc, SnapdError) else f"internal error: {describe_exception(exc)}"
        self.rt.instances.restore_failed(self.instance_id, why)

    def _clear_record(self) -> None:
        if not self.keep_record:
            self.rt.journal.clear(self.op)

    def post_hook(self) -> None:
        if self.spec.post_hook:
            self.report(ProgressEvent(Phase.HOOK, message="post-restore hook"))
            published = " ".join(f"{port}={address}" for port, address in self.published.items())
            self.spec.post_hook.run("post-restore", {"SNAPD_PID": str(self.root), "SNAPD_OPERATION": self.op,
                                                     "SNAPD_SNAPSHOT_ID": self.manifest.id,
                                                     "SNAPD_PUBLISHED": published},
                                    rollback="; the restored tree was killed")


def restore(rt: Runtime, spec: RestoreSpec, operation_id: str, report: Reporter,
            cancel: CancelToken) -> RestoreOutcome:
    """Restore the snapshot ``spec.ref`` names (see the module docstring); a full disk on
    any of its paths (hold record, staging, a chunk pulled on demand) is RestoreSpaceFull."""
    run = RestoreRun(rt, spec, operation_id, report, cancel)
    try:
        return run.execute()
    except StoreFull as full:
        raise full.recast(RestoreSpaceFull, snapshot_id=run.manifest.id) from full
    except Cancelled as err:
        if not run.held_pids:
            raise
        raise Cancelled(**{**err.fields, "undone": f"nothing was restored, but pids {run.held_pids} of the killed "
                           f"tree are still held (exiting, or zombies whose parents {parents(run.held_pids)} have "
                           "not reaped them)"}) from err
