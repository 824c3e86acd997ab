"""Checkpoint: process tree -> durable snapshot, or nothing and the tree running.

Order of events:
  1. inspect and claim the tree (refusals happen here, before anything is touched);
  2. CRIU dumps into a private staging directory, always leaving the tree running;
     at CRIU's post-dump point (tree still frozen) snapd SIGSTOPs the tree when it
     is to be stopped, recording the hold so a restarted daemon resumes it;
  3. the staging directory is fsynced and renamed into place (the snapshot appears);
  4. only now is a stopped tree killed. Any failure before: SIGCONT, staging removed.
"""

from __future__ import annotations

import platform
import signal
import socket
import threading
import time
from dataclasses import dataclass

import psutil
import structlog

from snapd_daemon import cgroups, gpu, metrics
from snapd_daemon.cas.follow import DumpFollower
from snapd_daemon.cas.store import Ingest, Staging
from snapd_daemon.criu import actions
from snapd_daemon.errors import CriuFailed, CudaFailed
from snapd_daemon.fsutil import tree_size
from snapd_daemon.hooks import Hook
from snapd_daemon.manifest import Manifest, new_snapshot_id
from snapd_daemon.processes import (
    PidState,
    ProcessTree,
    inspect_tree,
    signal_tree,
    wait_for_state,
)
from snapd_daemon.progress import DirectoryGrowth, Phase, ProgressEvent, Reporter
from snapd_daemon.runtime import Runtime

log = structlog.get_logger()
_KILL_WAIT_SECONDS = 30.0


@dataclass(frozen=True)
class CheckpointSpec:
    pid: int
    name: str = ""
    labels: dict[str, str] | None = None
    leave_running: bool = False
    pre_hook: Hook | None = None
    cuda_lock_timeout_ms: int = 0


class _PostDumpHold:
    """CRIU notify hook: at post-dump, SIGSTOP the (still frozen) tree so it
    cannot run between the dump and the moment the snapshot is durable."""

    def __init__(self, tree: ProcessTree, staging: Staging) -> None:
        self.tree = tree
        self.staging = staging
        self.held = False

    def __call__(self, script: str, _pid: int) -> None:
        if script != "post-dump":
            return
        self.staging.record_hold([{"pid": p.pid, "create_time": p.create_time} for p in self.tree.processes])
        signal_tree(self.tree, signal.SIGSTOP)
        self.held = True

    def release(self) -> None:
        if self.held:
            signal_tree(self.tree, signal.SIGCONT)
            self.held = False


def _tree_rss(tree: ProcessTree) -> int:
    """Current resident bytes of the tree (after a CUDA checkpoint it includes the VRAM copy)."""
    total = 0
    for pid in tree.pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def checkpoint(rt: Runtime, spec: CheckpointSpec, operation_id: str, report: Reporter) -> Manifest:
    started = time.monotonic()
    report(ProgressEvent(Phase.VALIDATE, message=f"inspecting pid {spec.pid}"))
    tree = inspect_tree(spec.pid, rt.daemon_pid)
    gpu_record = gpu.preflight(tree)
    with rt.registry.claim("checkpoint", operation_id, pids=tree.pids):
        log.info(
            "checkpoint.start", pid=spec.pid, processes=len(tree.processes), rss_bytes=tree.rss_bytes,
            leave_running=spec.leave_running, shell_job=tree.external_session,
            cuda_pids=list(gpu_record.cuda_pids) if gpu_record else [],
        )
        if spec.pre_hook:
            report(ProgressEvent(Phase.HOOK, message="pre-checkpoint hook"))
            spec.pre_hook.run("pre-checkpoint", {"SNAPD_PID": str(spec.pid), "SNAPD_OPERATION": operation_id})
        freeze = gpu.CudaFreeze(
            gpu_record.cuda_pids if gpu_record else (),
            spec.cuda_lock_timeout_ms or rt.settings.cuda_lock_timeout_ms,
        )
        staging: Staging | None = None
        hold: _PostDumpHold | None = None
        ingest: Ingest | None = None
        try:
            if gpu_record:
                report(ProgressEvent(Phase.GPU_CHECKPOINT, message=f"CUDA lock + checkpoint of {list(freeze.pids)}"))
                with metrics.phase("checkpoint", "gpu-checkpoint"):
                    freeze.freeze()
            needed = _tree_rss(tree)
            staging = rt.store.new_staging(operation_id, needed=needed)
            hold = _PostDumpHold(tree, staging)
            dumped = threading.Event()
            totals = {"raw": needed}

            def stored(done: int) -> None:
                if dumped.is_set():
                    report(ProgressEvent(Phase.COMMIT, done, totals["raw"]))

            ingest = rt.store.begin_ingest(staging.images, stored)
            report(ProgressEvent(Phase.DUMP, 0, needed, "criu dump"))
            with metrics.phase("checkpoint", "dump"), DirectoryGrowth(report, Phase.DUMP, staging.images, needed), \
                    DumpFollower(ingest, staging.images):
                try:
                    actions.dump(
                        rt.criu, spec.pid, staging.images, staging.work,
                        shell_job=tree.external_session, log_level=rt.settings.criu_log_level,
                        freeze_timeout=rt.settings.freeze_timeout,
                        on_notify=None if spec.leave_running else hold,
                    )
                except CriuFailed as exc:
                    full = rt.store.staging_full(staging, needed=needed)
                    if full:
                        raise full from exc
                    raise
            totals["raw"] = tree_size(staging.images)
            dumped.set()
            report(ProgressEvent(Phase.COMMIT, 0, totals["raw"], "storing chunks"))
            manifest = Manifest(
                id=new_snapshot_id(), name=spec.name, labels=dict(spec.labels or {}), created=time.time(),
                root_pid=spec.pid, processes=list(tree.processes), criu_version=rt.criu.version,
                kernel=platform.release(), hostname=socket.gethostname(), shell_job=tree.external_session,
                leave_running=spec.leave_running, gpu=gpu_record, cgroup=cgroups.describe(spec.pid),
            )
            manifest.checkpoint_seconds = round(time.monotonic() - started, 3)
            with metrics.phase("checkpoint", "commit"):
                manifest = ingest.finish(manifest)
        except BaseException as exc:
            if ingest:
                ingest.abort()
            if hold:
                hold.release()
            problems = freeze.thaw()
            if staging:
                rt.store.discard(staging)
            if problems:
                raise CudaFailed(action="rollback", pid=spec.pid, reason="; ".join(problems),
                                 rollback=f" (undoing the GPU checkpoint after: {exc})") from exc
            raise
        metrics.BYTES_WRITTEN.inc(manifest.new_bytes)
        if spec.leave_running:
            problems = freeze.thaw()
            rt.store.discard(staging)
            if problems:
                raise CudaFailed(action="resume", pid=spec.pid, reason="; ".join(problems),
                                 rollback=f" (snapshot {manifest.id} was stored)")
        else:
            report(ProgressEvent(Phase.STOP_SOURCE, message=f"stopping pids {tree.pids}"))
            signal_tree(tree, signal.SIGKILL)
            left = wait_for_state(tree.pids, {PidState.FREE, PidState.EXITING}, _KILL_WAIT_SECONDS)
            if left:
                log.warning("checkpoint.source_still_alive", pids=left)
            rt.store.discard(staging)
        log.info("checkpoint.done", snapshot=manifest.id, raw_bytes=manifest.raw_bytes,
                 stored_bytes=manifest.stored_bytes, new_bytes=manifest.new_bytes,
                 seconds=round(time.monotonic() - started, 3))
        return manifest
