"""Checkpoint: process tree -> durable snapshot, or nothing and the tree running.

A ``CheckpointRun`` goes through its phases in order, one method each:
  1. ``inspect``: read the tree, refuse what cannot work (before anything is
     touched), claim its pids; then the answer check's request to the live tree
     (answer.py) and the pre-checkpoint hook, after which a
     tree still holding live NCCL state is refused (host/nccl.py), and so is
     one whose GPU memory (what it holds after the hook) would not fit in its
     host memory, where the CUDA checkpoint copies it (host/hostmemory.py);
  2. ``hold``: write the hold record (runtime/holds.py), open the staging
     directory and the store's ingest;
  3. ``freeze_gpu``: CUDA lock + checkpoint of every CUDA process;
  4. ``dump``: CRIU dumps into staging, always leaving the tree running, while
     the dump follower already stores settled chunks and a thread records the
     file pages the tree has mapped in (host/filepages.py, which restores read
     ahead); at CRIU's post-dump point
     (tree still frozen) the tree is re-read and, unless it is to keep running,
     SIGSTOPped; with ``leave_running`` the GPUs are given back right after;
  5. ``commit``: the rest is stored, then the restore's cut, and the manifest
     is published (the snapshot appears); the hold record of a
     tree to stop turns into one that kills it;
  6. ``finish``: only now is a stopped tree killed (or a kept one left running).
Each of phases 2-4 pushes its undo onto the run's stack as it acts; a failure
before 6 unwinds it: SIGCONT, CUDA restore + unlock, stored chunks dropped,
staging removed, hold record cleared, in that order. The record stays when the
GPU side could not be thawed, so that a restarted daemon tries again.

Cancellation: the run checks its cancel token after the claim, after the
pre-hook, before and right after CRIU's dump (which is never interrupted:
the tree is frozen only while it runs), and before the manifest is
published, its commit point; an accepted cancel raises Cancelled there and
the same undo stack rolls everything back. A cancel after that is refused.
"""

from __future__ import annotations

import contextvars
import dataclasses
import platform
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from types import TracebackType

import structlog

from snapd_daemon import metrics
from snapd_daemon.checkpoint import answer
from snapd_daemon.checkpoint.cutplan import cut_fixed, plan
from snapd_daemon.checkpoint.follower import DumpFollower
from snapd_daemon.criu import actions
from snapd_daemon.criu.images import ImageFormatError, PagesImage, pages_images
from snapd_daemon.criu.notify import Notify
from snapd_daemon.criu.trim import TRIMMED, TrimmedLayout, write_trimmed
from snapd_daemon.errors import CriuFailed, CudaFailed
from snapd_daemon.host import cgroups, filepages, gpu, hostmemory, linkremap, nccl
from snapd_daemon.host.hooks import Hook
from snapd_daemon.host.namespaces import listening_ports, same_namespace
from snapd_daemon.host.probes import AnswerCheck, ReadyProbe
from snapd_daemon.host.processes import PidState, ProcessTree, inspect_tree, signal_tree, wait_for_state
from snapd_daemon.host.stdio import OutwardEnd, outward_stdio
from snapd_daemon.runtime import Runtime, criulogs
from snapd_daemon.runtime.cancel import CancelToken
from snapd_daemon.runtime.holds import KILL, HoldJournal, HoldRecord
from snapd_daemon.runtime.operation import OperationRun
from snapd_daemon.runtime.progress import DirectoryGrowth, Phase, ProgressEvent, Reporter
from snapd_daemon.runtime.staging import Staging
from snapd_daemon.snapshots.manifest import ImageEntry, Manifest, new_snapshot_id
from snapd_daemon.store.model import Piece
from snapd_daemon.store.protocol import IngestSession
from snapd_daemon.util.fsutil import tree_size

log = structlog.get_logger()
_KILL_WAIT_SECONDS = 30.0
_FILE_SCAN_SECONDS = 10.0


@dataclass(frozen=True)
class CheckpointSpec:
    pid: int
    name: str = ""
    labels: dict[str, str] | None = None
    leave_running: bool = False
    pre_hook: Hook | None = None
    cuda_lock_timeout_ms: int = 0
    keep_hot: bool = False
    tcp_established: bool = False
    ext_unix_sk: bool = False
    link_remap: bool = False
    # recorded in the snapshot (docs/readiness.md); ``verify`` is sent to the live tree first
    ready_probe: ReadyProbe | None = None
    verify: AnswerCheck | None = None


class _PostDumpHold(Notify):
    """At CRIU's post-dump point (tree still frozen by CRIU): take the tree as it is
    now (children forked since it was inspected included) and, when ``stop``, SIGSTOP
    it so it cannot run between the dump and the moment the snapshot is durable. ``quiet``
    wraps that work (the ingest's ``paused``: no writer competes with it for the GIL)."""

    def __init__(self, tree: ProcessTree, stop: bool, journal: HoldJournal, operation_id: str,
                 cuda_pids: tuple[int, ...], daemon_pid: int, link_remap: bool = False) -> None:
        self.tree = tree
        self.stop = stop
        self.link_remap = link_remap
        self.kept_links: list[str] = []  # names given to CRIU's link_remap links (host/linkremap.py)
        self.journal = journal
        self.operation_id = operation_id
        self.cuda_pids = cuda_pids
        self.daemon_pid = daemon_pid
        self.held = False
        self.quiet: Callable[[], AbstractContextManager[None]] = nullcontext

    def record(self, links: list[str] | None = None) -> None:
        """Write the THAW record; ``links``: kept links a restarted daemon must remove (those of
        a snapshot not yet published)."""
        self.journal.write(self.operation_id, HoldRecord(
            [(p.pid, p.create_time) for p in self.tree.processes], list(self.cuda_pids),
            stopped=[p.pid for p in self.tree.processes if p.stopped], links=links or []))

    def doom(self) -> None:
        """The snapshot is published: should the daemon die now, its next start kills the
        stopped source (by start time) instead of thawing it next to its snapshot. A record
        that cannot be rewritten (a full disk) fails nothing: the snapshot stands and the
        source is killed moments later; only a daemon killed in between would thaw it."""
        try:
            self.journal.write(self.operation_id, HoldRecord(
                [(p.pid, p.create_time) for p in self.tree.processes], list(self.cuda_pids), action=KILL))
        except OSError as exc:
            log.warning("checkpoint.kill_record_not_written", error=str(exc))

    def post_dump(self) -> None:
        # CRIU holds the tree in a tracing stop now: keep what was stopped when it was first inspected
        began = time.monotonic()
        with self.quiet():
            stopped = {p.pid for p in self.tree.processes if p.stopped}
            now = inspect_tree(self.tree.root, self.daemon_pid)
            self.tree = dataclasses.replace(now, processes=tuple(
                dataclasses.replace(p, stopped=p.pid in stopped) for p in now.processes))
            if self.link_remap:  # CRIU removes its links once this returns (the tree is left running)
                self.kept_links = linkremap.keep(linkremap.unlinked_open_files(self.tree.pids), self.operation_id,
                                                 self.record)
            if self.stop:
                self.record(self.kept_links)
                self.held = True
                signal_tree(self.tree, signal.SIGSTOP)
        log.info("checkpoint.post_dump", processes=len(self.tree.processes), stop=self.stop,
                 seconds=round(time.monotonic() - began, 3))

    def release(self) -> None:
        """Let the tree run again (a process stopped before the checkpoint stays stopped)."""
        if self.held:
            running = dataclasses.replace(self.tree, processes=tuple(p for p in self.tree.processes if not p.stopped))
            signal_tree(running, signal.SIGCONT)
            self.held = False


class CheckpointRun(OperationRun):
    def __init__(self, rt: Runtime, spec: CheckpointSpec, operation_id: str, report: Reporter,
                 cancel: CancelToken) -> None:
        super().__init__(rt, operation_id, report, cancel)
        self.spec = spec
        self.tree: ProcessTree
        self.gpu_record: gpu.GpuRecord | None = None
        self.stdio: list[OutwardEnd] = []
        self.hold_point: _PostDumpHold
        self.freeze: gpu.CudaFreeze
        self.staging: Staging
        self.ingest: IngestSession
        self.needed = 0
        self.raw = 0
        self.vram = 0
        self.keep_record = False
        self._dumped = threading.Event()
        self.file_pages: list[filepages.FilePages] = []
        self.answer: AnswerCheck | None = None
        self._file_scan: threading.Thread | None = None

    @property
    def cuda_pids(self) -> tuple[int, ...]:
        return self.gpu_record.cuda_pids if self.gpu_record else ()

    def execute(self) -> Manifest:
        self.inspect()
        with self.rt.registry.claim("checkpoint", self.op, pids=self.tree.pids):
            log.info("checkpoint.start", pid=self.spec.pid, processes=len(self.tree.processes),
                     rss_bytes=self.tree.rss_bytes, leave_running=self.spec.leave_running,
                     shell_job=self.tree.external_session, cuda_pids=list(self.cuda_pids))
            self.cancel.check()
            self.answer = answer.record(self.spec.verify, self.spec.pid, self.op) if self.spec.verify else None
            self.pre_hook()
            self.cancel.check()
            nccl.refuse_live(self.tree, self.spec.tcp_established)
            self.vram = gpu.memory_used(self.cuda_pids)  # the CUDA checkpoint copies it into host memory
            hostmemory.require_room_for_vram(self.cuda_pids, self.vram)
            with ExitStack() as undo:
                self.hold(undo)
                self.freeze_gpu(undo)
                self.cancel.check()
                self.dump()
                self.cancel.check()
                manifest = self.commit()
                undo.pop_all()
            self.finish(manifest)
            return manifest

    # -- phases ---------------------------------------------------------------

    def inspect(self) -> None:
        self.report(ProgressEvent(Phase.VALIDATE, message=f"inspecting pid {self.spec.pid}"))
        self.tree = inspect_tree(self.spec.pid, self.rt.daemon_pid)
        if not same_namespace("net", self.spec.pid, self.rt.daemon_pid):
            self.rt.criu.require_ip_tool(f"dumping pid {self.spec.pid}'s tree, which has a network namespace of its own,")
        self.gpu_record = gpu.preflight(self.tree)
        self.stdio = outward_stdio(self.tree.pids)

    def pre_hook(self) -> None:
        if self.spec.pre_hook:
            self.report(ProgressEvent(Phase.HOOK, message="pre-checkpoint hook"))
            self.spec.pre_hook.run("pre-checkpoint", {"SNAPD_PID": str(self.spec.pid), "SNAPD_OPERATION": self.op})

    def hold(self, undo: ExitStack) -> None:
        """Hold record, staging and ingest, each undone on failure (record last)."""
        rt, spec = self.rt, self.spec
        self.hold_point = _PostDumpHold(self.tree, not spec.leave_running, rt.journal, self.op, self.cuda_pids,
                                        rt.daemon_pid, spec.link_remap)
        undo.callback(lambda: linkremap.remove(self.hold_point.kept_links))
        self.freeze = gpu.CudaFreeze(self.cuda_pids, spec.cuda_lock_timeout_ms or rt.settings.cuda_lock_timeout_ms)
        vram = self.vram
        self.needed = self.raw = self.tree.rss_bytes + vram
        with rt.store.translate_os_errors(self.needed):  # a full disk: StoreFull before anything is touched
            self.hold_point.record()
        undo.push(self._clear_record)
        self.staging = rt.scratch.new(self.op, needed=self.needed, ram_besides=vram)
        undo.callback(rt.scratch.discard, self.staging)
        # RAM the checkpoint takes beyond what is free now: the host copy of VRAM, the
        # images when staged in RAM, and with keep_hot the hot copy of (at most) all of them
        ram_taken = vram + (self.needed if rt.scratch.in_ram(self.staging) else 0)
        self.ingest = undo.enter_context(rt.store.begin_ingest(
            self.staging.images, self._stored, keep_hot=spec.keep_hot, hot_ram_needed=ram_taken + self.needed))
        self.hold_point.quiet = self.ingest.paused  # the post-dump walk of /proc needs the GIL, not 16 writers

    def freeze_gpu(self, undo: ExitStack) -> None:
        undo.push(self._thaw_gpu)
        undo.callback(self.hold_point.release)
        if self.gpu_record:
            self.report(ProgressEvent(Phase.GPU_CHECKPOINT, message=f"CUDA lock + checkpoint of {list(self.cuda_pids)}",
                                      frozen=True))
            with metrics.phase("checkpoint", "gpu-checkpoint"):
                self.freeze.freeze()

    def dump(self) -> None:
        rt, staging = self.rt, self.staging
        self.report(ProgressEvent(Phase.DUMP, 0, self.needed, "criu dump", frozen=True))
        if rt.settings.warm_file_bytes:
            # beside the dump, not after it: on an H200 host the scan took 0.6-0.8 s, most of
            # it on the commit's path. The tree's file mappings stay as they are from CRIU's
            # freeze on, moments later (a CUDA tree is locked already)
            self._file_scan = threading.Thread(target=contextvars.copy_context().run, args=(self._scan_file_pages,),
                                               name="file-pages", daemon=True)
            self._file_scan.start()
        with metrics.phase("checkpoint", "dump"), \
                DirectoryGrowth(self.report, Phase.DUMP, staging.images, self.needed, frozen=True), \
                DumpFollower(self.ingest, staging.images), rt.store.translate_os_errors(self.needed), \
                criulogs.kept(rt.settings.criu_log_dir(), self.op):
            try:
                actions.dump(
                    rt.criu, self.spec.pid, staging.images, staging.work,
                    shell_job=self.tree.external_session, log_level=rt.settings.criu_log_level,
                    freeze_timeout=rt.settings.freeze_timeout, notify=self.hold_point,
                    external=[e.criu_external for e in self.stdio if e.criu_external],
                    tcp_established=self.spec.tcp_established, ext_unix_sk=self.spec.ext_unix_sk,
                    link_remap=self.spec.link_remap, own_mntns=self.tree.own_mntns,
                )
            except CriuFailed as exc:
                full = rt.scratch.full(staging, needed=self.needed)
                if full:
                    raise full from exc
                raise
        if self.spec.leave_running and self.gpu_record:
            # the images are complete: the server gets its GPUs back now, not after the store
            self.report(ProgressEvent(Phase.GPU_RESTORE, message=f"CUDA restore + unlock of {list(self.cuda_pids)}"))
            problems = self.freeze.thaw()
            if problems:
                raise CudaFailed(action="resume", pid=self.spec.pid, reason="; ".join(problems), rollback="")

    def commit(self) -> Manifest:
        rt, spec = self.rt, self.spec
        self.raw = tree_size(self.staging.images)
        self._dumped.set()
        self.report(ProgressEvent(Phase.COMMIT, 0, self.raw, "storing chunks", frozen=not self.spec.leave_running))
        manifest = Manifest(
            id=new_snapshot_id(), name=spec.name, labels=dict(spec.labels or {}), created=time.time(),
            root_pid=spec.pid, processes=list(self.hold_point.tree.processes), criu_version=rt.criu.version,
            kernel=platform.release(), hostname=socket.gethostname(), shell_job=self.tree.external_session,
            leave_running=spec.leave_running, gpu=self.gpu_record, cgroup=cgroups.describe(spec.pid),
            outward_stdio=self.stdio, tcp_established=spec.tcp_established, ext_unix_sk=spec.ext_unix_sk,
            link_remap=spec.link_remap, link_remap_files=self.hold_point.kept_links,
            ns_pids=dict(self.hold_point.tree.ns_pids),
        )
        manifest.own_netns = not same_namespace("net", spec.pid, rt.daemon_pid)
        manifest.ns_ports = listening_ports(spec.pid) if manifest.own_netns else []
        manifest.own_mntns = self.hold_point.tree.own_mntns
        manifest.checkpoint_seconds = round(time.monotonic() - self.started, 3)
        manifest.ready_probe, manifest.answer_check = spec.ready_probe, self.answer
        with metrics.phase("checkpoint", "commit"):
            pages = pages_images(self.staging.images)
            final = plan(self.staging.images, pages)
            self.ingest.extend(final)  # the dump's last pieces are stored while the cut is written
            if rt.settings.inject_min_bytes:
                manifest.trimmed = self._trim(pages, rt.settings.inject_min_bytes, final)
            chunks = self.ingest.complete(final)
            manifest.files = [ImageEntry(name, sum(p.length for p in cuts), chunks[name]) for name, cuts in final.items()]
            manifest.file_pages = self._scanned_file_pages()
            self.cancel.commit()
            rt.catalog.publish(self.ingest, manifest)
        if not spec.leave_running:
            self.hold_point.doom()
        elif self.hold_point.kept_links:
            self.hold_point.record()  # the links are the snapshot's now
        self.ingest.close()
        metrics.BYTES_WRITTEN.inc(manifest.new_bytes)
        return manifest

    def _trim(self, pages: list[PagesImage], min_region: int, final: dict[str, list[Piece]]) -> TrimmedLayout | None:
        """The restore's cut, made now (criu/trim.py): its files join ``final``, cut at fixed
        offsets (a restore then reads a trimmed pages file as a few 2 MiB chunks; cut as the
        originals are, at every small mapping, their chunks would be shared with them but
        thousands). Best effort: the snapshot is whole without it, so a failure (staging
        full, say) only leaves restores to cut for themselves."""
        began = time.monotonic()
        try:
            trimmed = write_trimmed(self.staging.images, pages, min_region)
        except (OSError, ImageFormatError) as exc:
            log.warning("checkpoint.cut_not_stored", error=str(exc))
            shutil.rmtree(self.staging.images / TRIMMED, ignore_errors=True)
            return None
        final.update({name: cut_fixed((self.staging.images / name).stat().st_size) for name in trimmed.names})
        log.info("checkpoint.cut_written", bytes=sum(p.length for name in trimmed.names for p in final[name]),
                 seconds=round(time.monotonic() - began, 3))
        self.raw = tree_size(self.staging.images)
        return trimmed.layout

    def _scan_file_pages(self) -> None:
        """The file pages restores will read ahead (host/filepages.py), of the processes held
        when the dump began (one started between the tree's inspection and CRIU's freeze
        is dumped but not read ahead). Best effort, like the cut."""
        began = time.monotonic()
        try:
            self.file_pages = filepages.scan(self.hold_point.tree.pids, self.rt.settings.warm_file_bytes)
        except Exception as exc:  # noqa: BLE001 (advice for restores: never a reason to fail a checkpoint)
            log.warning("checkpoint.file_pages_not_recorded", error=repr(exc))
            return
        log.info("checkpoint.file_pages", files=len(self.file_pages), bytes=sum(f.size for f in self.file_pages),
                 seconds=round(time.monotonic() - began, 3))

    def _scanned_file_pages(self) -> list[filepages.FilePages]:
        """What the scan found, if it ended in time (reading /proc/PID/pagemap waits for the
        process's memory map lock, which a process stuck in its driver may hold)."""
        if self._file_scan is None:
            return []
        self._file_scan.join(_FILE_SCAN_SECONDS)
        if self._file_scan.is_alive():
            log.warning("checkpoint.file_pages_not_recorded", error=f"scan still running after {_FILE_SCAN_SECONDS} s")
            return []
        return self.file_pages

    def finish(self, manifest: Manifest) -> None:
        """The snapshot is durable: kill a stopped tree, drop staging and the hold record."""
        tree = self.hold_point.tree
        if not self.spec.leave_running:
            self.report(ProgressEvent(Phase.STOP_SOURCE, message=f"stopping pids {tree.pids}"))
            signal_tree(tree, signal.SIGKILL)
            left = wait_for_state(tree.pids, {PidState.FREE, PidState.EXITING}, _KILL_WAIT_SECONDS)
            if left:
                log.warning("checkpoint.source_still_alive", pids=left)
        self.rt.scratch.discard(self.staging)
        self.rt.journal.clear(self.op)
        log.info("checkpoint.done", snapshot=manifest.id, raw_bytes=manifest.raw_bytes,
                 stored_bytes=manifest.stored_bytes, new_bytes=manifest.new_bytes,
                 seconds=round(time.monotonic() - self.started, 3))

    # -- undo steps -----------------------------------------------------------

    def _stored(self, done: int) -> None:
        if self._dumped.is_set():
            self.report(ProgressEvent(Phase.COMMIT, done, self.raw, frozen=not self.spec.leave_running))

    def _thaw_gpu(self, _type: type[BaseException] | None, cause: BaseException | None,
                  _tb: TracebackType | None) -> None:
        """Bring the GPU side back; CudaFailed (replacing ``cause``) when it could not be."""
        problems = self.freeze.thaw()
        if problems:
            self.keep_record = True
            raise CudaFailed(action="rollback", pid=self.tree.root, reason="; ".join(problems),
                             rollback=f" (undoing the GPU checkpoint after: {cause})") from cause

    def _clear_record(self, *_exc: object) -> None:
        if not self.keep_record:
            self.rt.journal.clear(self.op)


def checkpoint(rt: Runtime, spec: CheckpointSpec, operation_id: str, report: Reporter,
               cancel: CancelToken) -> Manifest:
    """Checkpoint ``spec.pid``'s tree into a new snapshot (see the module docstring)."""
    return CheckpointRun(rt, spec, operation_id, report, cancel).execute()
