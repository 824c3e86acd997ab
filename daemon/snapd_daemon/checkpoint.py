"""Checkpoint: process tree -> durable snapshot, or nothing and the tree running.

Order of events:
  1. inspect and claim the tree (refusals happen here, before anything is touched);
     run the pre-checkpoint hook;
  2. write the hold record (holds.py), open the staging directory and the ingest,
     then CUDA lock + checkpoint every CUDA process;
  3. CRIU dumps into staging, always leaving the tree running, while the dump
     follower already stores settled chunks; at CRIU's post-dump point (tree still
     frozen) snapd re-reads the tree and, unless it is to keep running, SIGSTOPs it;
  4. the rest is stored and the manifest published (the snapshot appears);
  5. only now is a stopped tree killed, or a kept one thawed (CUDA restore + unlock).
Any failure before 5: SIGCONT, CUDA restore + unlock, stored chunks dropped,
staging removed, in that order.
"""

from __future__ import annotations

import platform
import signal
import socket
import threading
import time
from dataclasses import dataclass

import structlog

from snapd_daemon import cgroups, gpu, metrics
from snapd_daemon.cas.follow import DumpFollower
from snapd_daemon.cas.store import Ingest, Staging
from snapd_daemon.criu import actions
from snapd_daemon.errors import CriuFailed, CudaFailed
from snapd_daemon.fsutil import tree_size
from snapd_daemon.holds import HoldJournal, HoldRecord
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
from snapd_daemon.stdio import outward_stdio

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
    keep_hot: bool = False


class _PostDumpHold:
    """CRIU notify hook, at post-dump (tree still frozen by CRIU): take the tree as
    it is now (children forked since it was inspected included) and, when ``stop``,
    SIGSTOP it so it cannot run between the dump and the moment the snapshot is durable."""

    def __init__(self, tree: ProcessTree, stop: bool, journal: HoldJournal, operation_id: str,
                 cuda_pids: tuple[int, ...], daemon_pid: int) -> None:
        self.tree = tree
        self.stop = stop
        self.journal = journal
        self.operation_id = operation_id
        self.cuda_pids = cuda_pids
        self.daemon_pid = daemon_pid
        self.held = False

    def record(self) -> None:
        self.journal.write(self.operation_id, HoldRecord(
            [(p.pid, p.create_time) for p in self.tree.processes], list(self.cuda_pids)))

    def __call__(self, script: str, _pid: int) -> None:
        if script != "post-dump":
            return
        self.tree = inspect_tree(self.tree.root, self.daemon_pid)
        if self.stop:
            self.record()
            self.held = True
            signal_tree(self.tree, signal.SIGSTOP)

    def release(self) -> None:
        if self.held:
            signal_tree(self.tree, signal.SIGCONT)
            self.held = False


def checkpoint(rt: Runtime, spec: CheckpointSpec, operation_id: str, report: Reporter) -> Manifest:
    started = time.monotonic()
    report(ProgressEvent(Phase.VALIDATE, message=f"inspecting pid {spec.pid}"))
    tree = inspect_tree(spec.pid, rt.daemon_pid)
    gpu_record = gpu.preflight(tree)
    stdio_ends = outward_stdio(tree.pids)
    with rt.registry.claim("checkpoint", operation_id, pids=tree.pids):
        log.info(
            "checkpoint.start", pid=spec.pid, processes=len(tree.processes), rss_bytes=tree.rss_bytes,
            leave_running=spec.leave_running, shell_job=tree.external_session,
            cuda_pids=list(gpu_record.cuda_pids) if gpu_record else [],
        )
        if spec.pre_hook:
            report(ProgressEvent(Phase.HOOK, message="pre-checkpoint hook"))
            spec.pre_hook.run("pre-checkpoint", {"SNAPD_PID": str(spec.pid), "SNAPD_OPERATION": operation_id})
        cuda_pids = gpu_record.cuda_pids if gpu_record else ()
        freeze = gpu.CudaFreeze(cuda_pids, spec.cuda_lock_timeout_ms or rt.settings.cuda_lock_timeout_ms)
        hold = _PostDumpHold(tree, not spec.leave_running, rt.journal, operation_id, cuda_pids, rt.daemon_pid)
        staging: Staging | None = None
        ingest: Ingest | None = None
        dumped = threading.Event()
        vram = gpu.memory_used(cuda_pids)  # the CUDA checkpoint copies it into host memory
        needed = tree.rss_bytes + vram
        totals = {"raw": needed}

        def stored(done: int) -> None:
            if dumped.is_set():
                report(ProgressEvent(Phase.COMMIT, done, totals["raw"]))

        try:
            hold.record()
            staging = rt.store.new_staging(operation_id, needed=needed, ram_besides=vram)
            # RAM the checkpoint takes beyond what is free now: the host copy of VRAM, the
            # images when staged in RAM, and with keep_hot the hot copy of (at most) all of them
            ram_taken = vram + (needed if rt.store.scratch.in_ram(staging) else 0)
            ingest = rt.store.begin_ingest(staging.images, stored, keep_hot=spec.keep_hot,
                                           hot_ram_needed=ram_taken + needed)
            if gpu_record:
                report(ProgressEvent(Phase.GPU_CHECKPOINT, message=f"CUDA lock + checkpoint of {list(cuda_pids)}"))
                with metrics.phase("checkpoint", "gpu-checkpoint"):
                    freeze.freeze()
            report(ProgressEvent(Phase.DUMP, 0, needed, "criu dump"))
            with metrics.phase("checkpoint", "dump"), DirectoryGrowth(report, Phase.DUMP, staging.images, needed), \
                    DumpFollower(ingest, staging.images), rt.store.translate_os_errors(needed):
                try:
                    actions.dump(
                        rt.criu, spec.pid, staging.images, staging.work,
                        shell_job=tree.external_session, log_level=rt.settings.criu_log_level,
                        freeze_timeout=rt.settings.freeze_timeout, on_notify=hold,
                        external=[e.criu_external for e in stdio_ends if e.criu_external],
                    )
                except CriuFailed as exc:
                    full = rt.store.staging_full(staging, needed=needed)
                    if full:
                        raise full from exc
                    raise
            if spec.leave_running and gpu_record:
                # the images are complete: the server gets its GPUs back now, not after the store
                report(ProgressEvent(Phase.GPU_RESTORE, message=f"CUDA restore + unlock of {list(cuda_pids)}"))
                problems = freeze.thaw()
                if problems:
                    raise CudaFailed(action="resume", pid=spec.pid, reason="; ".join(problems), rollback="")
            totals["raw"] = tree_size(staging.images)
            dumped.set()
            report(ProgressEvent(Phase.COMMIT, 0, totals["raw"], "storing chunks"))
            manifest = Manifest(
                id=new_snapshot_id(), name=spec.name, labels=dict(spec.labels or {}), created=time.time(),
                root_pid=spec.pid, processes=list(hold.tree.processes), criu_version=rt.criu.version,
                kernel=platform.release(), hostname=socket.gethostname(), shell_job=tree.external_session,
                leave_running=spec.leave_running, gpu=gpu_record, cgroup=cgroups.describe(spec.pid),
                outward_stdio=stdio_ends,
            )
            manifest.checkpoint_seconds = round(time.monotonic() - started, 3)
            with metrics.phase("checkpoint", "commit"):
                manifest = ingest.finish(manifest)
        except BaseException as exc:
            _roll_back(rt, operation_id, hold, freeze, ingest, staging, exc)
            raise
        metrics.BYTES_WRITTEN.inc(manifest.new_bytes)
        if spec.leave_running:
            rt.store.discard(staging)
        else:
            report(ProgressEvent(Phase.STOP_SOURCE, message=f"stopping pids {hold.tree.pids}"))
            signal_tree(hold.tree, signal.SIGKILL)
            left = wait_for_state(hold.tree.pids, {PidState.FREE, PidState.EXITING}, _KILL_WAIT_SECONDS)
            if left:
                log.warning("checkpoint.source_still_alive", pids=left)
            rt.store.discard(staging)
        rt.journal.clear(operation_id)
        log.info("checkpoint.done", snapshot=manifest.id, raw_bytes=manifest.raw_bytes,
                 stored_bytes=manifest.stored_bytes, new_bytes=manifest.new_bytes,
                 seconds=round(time.monotonic() - started, 3))
        return manifest


def _roll_back(rt: Runtime, operation_id: str, hold: _PostDumpHold, freeze: gpu.CudaFreeze,
               ingest: Ingest | None, staging: Staging | None, cause: BaseException) -> None:
    """Undo a failed checkpoint: let the tree run first (SIGCONT, CUDA restore +
    unlock), then drop what was stored and staged. The hold record stays when the
    GPU side could not be thawed, so that a restarted daemon tries again."""
    try:
        hold.release()
    finally:
        problems = freeze.thaw()
        try:
            if ingest:
                ingest.abort()
        finally:
            if staging:
                rt.store.discard(staging)
            if not problems:
                rt.journal.clear(operation_id)
    if problems:
        raise CudaFailed(action="rollback", pid=hold.tree.root, reason="; ".join(problems),
                         rollback=f" (undoing the GPU checkpoint after: {cause})") from cause
