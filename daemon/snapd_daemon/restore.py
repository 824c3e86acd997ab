"""Restore: snapshot -> live process tree with its original pids.

The snapshot's images are written, verified, into a per-operation staging
directory (RAM when it has room) with the large regions cut out; CRIU restores
from there and snapd writes those regions into the processes before they
resume (fastrestore.py). Then the GPU side is restored and unlocked.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import structlog

from snapd_daemon import fastrestore, gpu, metrics, stdio
from snapd_daemon.cgroups import CgroupRequest
from snapd_daemon.criu import actions
from snapd_daemon.errors import PidsInUse, PidsStillExiting
from snapd_daemon.holds import HoldRecord
from snapd_daemon.hooks import Hook
from snapd_daemon.manifest import Manifest
from snapd_daemon.processes import PidState, comm, parent_of, pid_state, wait_for_state
from snapd_daemon.progress import Phase, ProgressEvent, Reporter
from snapd_daemon.runtime import Runtime

log = structlog.get_logger()


@dataclass(frozen=True)
class RestoreOutcome:
    snapshot_id: str
    root_pid: int
    pids: list[int]
    seconds: float
    # where the tree's outward stdio pipes write now (None: it had none)
    log_path: Path | None = None


def ensure_pids_free(manifest: Manifest, wait_seconds: float) -> None:
    """Refuse at once if a snapshot pid is held by a live process; wait for exiting ones."""
    exiting = []
    for rec in manifest.processes:
        state = pid_state(rec.pid)
        if state is PidState.ALIVE:
            raise PidsInUse(snapshot_id=manifest.id, pid=rec.pid, name=comm(rec.pid))
        if state is PidState.EXITING:
            exiting.append(rec.pid)
    if not exiting:
        return
    log.info("restore.waiting_for_exit", pids=exiting)
    left = wait_for_state(exiting, {PidState.FREE}, wait_seconds)
    if left:
        raise PidsStillExiting(snapshot_id=manifest.id, pid=left[0], seconds=wait_seconds, ppid=parent_of(left[0]))


@dataclass(frozen=True)
class RestoreSpec:
    ref: str
    wait_seconds: float = 0.0
    gpu_uuid_map: dict[str, str] = field(default_factory=dict)
    post_hook: Hook | None = None
    cgroup: CgroupRequest | None = None
    # file in the restore log directory for outward stdio pipes ("": "<snapshot id>.log")
    log_name: str = ""


def _kill_restored(pids: list[int]) -> None:
    """SIGKILL a tree this operation restored (its pids are claimed by the operation)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_for_state(pids, {PidState.FREE, PidState.EXITING}, 30)


def restore(rt: Runtime, spec: RestoreSpec, operation_id: str, report: Reporter) -> RestoreOutcome:
    started = time.monotonic()
    manifest = rt.store.get(spec.ref)
    with (rt.registry.claim("restore", operation_id, pids=manifest.pids, snapshot_id=manifest.id),
          rt.cgroups.placement(spec.cgroup, manifest) as cgroup):
        manifest = rt.store.get(manifest.id)  # still there now that it is claimed (an rm may have won)
        report(ProgressEvent(Phase.PREPARE, 0, manifest.raw_bytes, f"checking pids {manifest.pids}"))
        pairs = gpu.restore_pairs(manifest.id, manifest.gpu, spec.gpu_uuid_map) if manifest.gpu else {}
        ensure_pids_free(manifest, spec.wait_seconds or rt.settings.pid_wait_seconds)
        run_dir = rt.store.new_staging(operation_id, needed=manifest.raw_bytes)
        try:
            with metrics.phase("restore", "prepare"), rt.store.translate_os_errors(manifest.raw_bytes):
                plan = fastrestore.prepare(
                    rt.store, manifest, run_dir.images, rt.settings.inject_min_bytes,
                    lambda done: report(ProgressEvent(Phase.PREPARE, done, manifest.raw_bytes)),
                    huge_pages=rt.settings.inject_huge_pages,
                )
            log.info("restore.prepared", criu_bytes=plan.kept_bytes, inject_bytes=plan.injected_bytes,
                     chunks_to_inject=len(plan.memory))
            report(ProgressEvent(Phase.RESTORE, 0, plan.kept_bytes, "criu restore"))

            def fill(script: str, _pid: int) -> None:
                if script != "pre-resume":
                    return
                if manifest.gpu:  # the tree exists now: name it by start time too, so pids reused later are safe
                    rt.journal.write(operation_id, HoldRecord([(pid, psutil.Process(pid).create_time())
                                                               for pid in manifest.pids], list(manifest.gpu.cuda_pids)))
                if not plan.memory:
                    return
                report(ProgressEvent(Phase.INJECT, 0, plan.injected_bytes, "writing memory"))
                with metrics.phase("restore", "inject"):
                    rt.store.deliver(manifest, plan.memory,
                                     lambda done: report(ProgressEvent(Phase.INJECT, done, plan.injected_bytes)))

            if manifest.gpu:  # from here until its GPUs are back, the tree is frozen on the GPU side
                rt.journal.write(operation_id, HoldRecord([(pid, 0.0) for pid in manifest.pids],
                                                          list(manifest.gpu.cuda_pids)))
            with metrics.phase("restore", "criu"), stdio.inherited_fds(
                    manifest.outward_stdio, rt.settings.log_dir(), spec.log_name or f"{manifest.id}.log",
            ) as (inherit, log_path):
                root = actions.restore(
                    rt.criu, manifest.root_pid, run_dir.images, run_dir.work,
                    shell_job=manifest.shell_job, log_level=rt.settings.criu_log_level, on_notify=fill,
                    cgroup=cgroup, inherit=inherit,
                )
        except BaseException:
            rt.journal.clear(operation_id)  # CRIU killed what it had restored
            raise
        finally:
            rt.store.discard(run_dir)
        metrics.BYTES_READ.inc(manifest.raw_bytes)
        try:
            if manifest.gpu:
                report(ProgressEvent(Phase.GPU_RESTORE, message=f"CUDA restore + unlock of {list(manifest.gpu.cuda_pids)}"))
                with metrics.phase("restore", "gpu-restore"):
                    gpu.resume_restored(manifest.gpu.cuda_pids, pairs)
            if spec.post_hook:
                report(ProgressEvent(Phase.HOOK, message="post-restore hook"))
                spec.post_hook.run("post-restore", {"SNAPD_PID": str(root), "SNAPD_OPERATION": operation_id,
                                                    "SNAPD_SNAPSHOT_ID": manifest.id},
                                   rollback="; the restored tree was killed")
        except BaseException:
            _kill_restored(manifest.pids)
            raise
        finally:
            rt.journal.clear(operation_id)
        outcome = RestoreOutcome(
            snapshot_id=manifest.id, root_pid=root, pids=manifest.pids, seconds=round(time.monotonic() - started, 3),
            log_path=log_path if any(e.writes for e in manifest.outward_stdio) else None,
        )
        log.info("restore.done", snapshot=manifest.id, root_pid=root, seconds=outcome.seconds)
        return outcome
