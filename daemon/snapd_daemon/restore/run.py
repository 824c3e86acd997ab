"""Restore: snapshot -> live process tree with its original pids.

A ``RestoreRun`` goes through its phases in order, one method each:
  1. ``claim``: find the snapshot, claim its pids and itself, open the cgroup
     placement, check the GPUs and that the pids are free;
  2. ``prepare``: write the snapshot's images, verified, into a staging
     directory (RAM when it has room) with the large regions cut out (images.py);
  3. ``criu``: CRIU restores from there; at its pre-resume point snapd writes
     those regions into the processes (``_PreResume``, delivery.py);
  4. ``resume_gpu``: the GPU side is restored and unlocked; then the post-restore hook.
Undo: staging is always discarded; a GPU restore's hold record is cleared
when the operation ends; a failure after CRIU kills the restored tree.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import structlog

from snapd_daemon import metrics
from snapd_daemon.criu import actions
from snapd_daemon.criu.notify import Notify
from snapd_daemon.host import gpu, stdio
from snapd_daemon.host.cgroups import Cgroup, CgroupRequest, Needs
from snapd_daemon.host.hooks import Hook
from snapd_daemon.restore import images
from snapd_daemon.restore.delivery import Delivery
from snapd_daemon.restore.pids import ensure_pids_free, kill_restored
from snapd_daemon.runtime import Runtime, criulogs
from snapd_daemon.runtime.cancel import CancelToken
from snapd_daemon.runtime.holds import HoldRecord
from snapd_daemon.runtime.progress import Phase, ProgressEvent, Reporter
from snapd_daemon.runtime.staging import Staging
from snapd_daemon.snapshots.manifest import Manifest

log = structlog.get_logger()


@dataclass(frozen=True)
class RestoreSpec:
    ref: str
    wait_seconds: float = 0.0
    gpu_uuid_map: dict[str, str] = field(default_factory=dict)
    post_hook: Hook | None = None
    cgroup: CgroupRequest | None = None
    # file in the restore log directory for outward stdio pipes ("": "<snapshot id>.log")
    log_name: str = ""


@dataclass(frozen=True)
class RestoreOutcome:
    snapshot_id: str
    root_pid: int
    pids: list[int]
    seconds: float
    # where the tree's outward stdio pipes write now (None: it had none)
    log_path: Path | None = None


class _PreResume(Notify):
    """At CRIU's pre-resume point (every task restored, none running yet): name a GPU
    tree by start time in its hold record, then write the injected regions."""

    def __init__(self, run: RestoreRun, plan: images.FastRestore) -> None:
        self.run = run
        self.plan = plan

    def pre_resume(self) -> None:
        run, manifest = self.run, self.run.manifest
        if manifest.gpu:  # the tree exists now: name it by start time too, so pids reused later are safe
            run.rt.journal.write(run.op, HoldRecord([(pid, psutil.Process(pid).create_time())
                                                     for pid in manifest.pids], list(manifest.gpu.cuda_pids)))
        if not self.plan.memory:
            return
        total = self.plan.injected_bytes
        run.report(ProgressEvent(Phase.INJECT, 0, total, "writing memory"))
        with metrics.phase("restore", "inject"):
            run.delivery.run(self.plan.memory, lambda done: run.report(ProgressEvent(Phase.INJECT, done, total)))


class RestoreRun:
    def __init__(self, rt: Runtime, spec: RestoreSpec, operation_id: str, report: Reporter,
                 cancel: CancelToken) -> None:
        self.rt = rt
        self.spec = spec
        self.op = operation_id
        self.report = report
        self.cancel = cancel
        self.started = time.monotonic()
        self.manifest: Manifest = rt.catalog.get(spec.ref)
        self.delivery = Delivery(rt.store, self.manifest, rt.settings.io_threads)
        self.pairs: dict[int, list[tuple[bytes, bytes]]] = {}
        self.staging: Staging
        self.root = 0
        self.log_path: Path | None = None

    def execute(self) -> RestoreOutcome:
        m = self.manifest
        needs = Needs(m.id, m.raw_bytes, sum(p.threads for p in m.processes) + 1)
        with (self.rt.registry.claim("restore", self.op, pids=m.pids, snapshot_id=m.id),
              self.rt.cgroups.placement(self.spec.cgroup, needs) as cgroup):
            self.claim()
            with ExitStack() as always:
                always.callback(self.rt.journal.clear, self.op)
                self.staging = self.rt.scratch.new(self.op, needed=self.manifest.raw_bytes)
                with ExitStack() as staged:
                    staged.callback(self.rt.scratch.discard, self.staging)
                    self.cancel.check()
                    plan = self.prepare()
                    self.cancel.check()
                    self.criu(plan, cgroup)
                metrics.BYTES_READ.inc(self.manifest.raw_bytes)
                with ExitStack() as undo:
                    undo.callback(kill_restored, self.manifest.pids)
                    self.cancel.commit()  # the commit point: a cancel during CRIU kills the tree
                    self.resume_gpu()
                    self.post_hook()
                    undo.pop_all()
        outcome = RestoreOutcome(
            snapshot_id=m.id, root_pid=self.root, pids=m.pids, seconds=round(time.monotonic() - self.started, 3),
            log_path=self.log_path if any(e.writes for e in m.outward_stdio) else None,
        )
        log.info("restore.done", snapshot=m.id, root_pid=self.root, seconds=outcome.seconds)
        return outcome

    # -- phases ---------------------------------------------------------------

    def claim(self) -> None:
        """Re-read the snapshot now that it is claimed (an rm may have won), check GPUs and pids."""
        self.manifest = m = self.rt.catalog.get(self.manifest.id)
        self.delivery = Delivery(self.rt.store, m, self.rt.settings.io_threads)
        self.report(ProgressEvent(Phase.PREPARE, 0, m.raw_bytes, f"checking pids {m.pids}"))
        self.pairs = gpu.restore_pairs(m.id, m.gpu, self.spec.gpu_uuid_map) if m.gpu else {}
        ensure_pids_free(m, self.spec.wait_seconds or self.rt.settings.pid_wait_seconds)

    def prepare(self) -> images.FastRestore:
        m, settings = self.manifest, self.rt.settings
        with metrics.phase("restore", "prepare"), self.rt.store.translate_os_errors(m.raw_bytes):
            plan = images.prepare(
                self.delivery, m, self.staging.images, settings.inject_min_bytes,
                lambda done: self.report(ProgressEvent(Phase.PREPARE, done, m.raw_bytes)),
                huge_pages=settings.inject_huge_pages,
            )
        log.info("restore.prepared", criu_bytes=plan.kept_bytes, inject_bytes=plan.injected_bytes,
                 chunks_to_inject=len(plan.memory))
        return plan

    def criu(self, plan: images.FastRestore, cgroup: Cgroup | None) -> None:
        m, rt = self.manifest, self.rt
        self.report(ProgressEvent(Phase.RESTORE, 0, plan.kept_bytes, "criu restore"))
        if m.gpu:  # from here until its GPUs are back, the tree is frozen on the GPU side
            rt.journal.write(self.op, HoldRecord([(pid, 0.0) for pid in m.pids], list(m.gpu.cuda_pids)))
        with metrics.phase("restore", "criu"), criulogs.kept(rt.settings.criu_log_dir(), self.op), stdio.inherited_fds(
                m.outward_stdio, rt.settings.log_dir(), self.spec.log_name or f"{m.id}.log",
        ) as (inherit, self.log_path):
            self.root = actions.restore(
                rt.criu, m.root_pid, self.staging.images, self.staging.work,
                shell_job=m.shell_job, log_level=rt.settings.criu_log_level, notify=_PreResume(self, plan),
                place=cgroup.adopt if cgroup is not None else None, inherit=inherit,
            )

    def resume_gpu(self) -> None:
        m = self.manifest
        if m.gpu:
            self.report(ProgressEvent(Phase.GPU_RESTORE, message=f"CUDA restore + unlock of {list(m.gpu.cuda_pids)}"))
            with metrics.phase("restore", "gpu-restore"):
                gpu.resume_restored(m.gpu.cuda_pids, self.pairs)

    def post_hook(self) -> None:
        if self.spec.post_hook:
            self.report(ProgressEvent(Phase.HOOK, message="post-restore hook"))
            self.spec.post_hook.run("post-restore", {"SNAPD_PID": str(self.root), "SNAPD_OPERATION": self.op,
                                                     "SNAPD_SNAPSHOT_ID": self.manifest.id},
                                    rollback="; the restored tree was killed")


def restore(rt: Runtime, spec: RestoreSpec, operation_id: str, report: Reporter,
            cancel: CancelToken) -> RestoreOutcome:
    """Restore the snapshot ``spec.ref`` names (see the module docstring)."""
    return RestoreRun(rt, spec, operation_id, report, cancel).execute()
