"""Domain objects <-> snapd.v1 protobuf messages."""

from __future__ import annotations

from snapd.v1 import snapd_pb2 as pb
from snapd_daemon.remote import PullOutcome, PushOutcome, RemoteGcReport
from snapd_daemon.restore import RestoreOutcome
from snapd_daemon.runtime.events import Event, OperationNote
from snapd_daemon.runtime.instances import GpuMemory, Instance, State
from snapd_daemon.runtime.progress import Phase, ProgressEvent
from snapd_daemon.runtime.registry import RunningOperation
from snapd_daemon.snapshots.catalog import DamagedManifest, FsckReport, GcReport
from snapd_daemon.snapshots.manifest import Manifest

_PHASES = {
    Phase.VALIDATE: pb.PHASE_VALIDATE,
    Phase.DUMP: pb.PHASE_DUMP,
    Phase.COMMIT: pb.PHASE_COMMIT,
    Phase.STOP_SOURCE: pb.PHASE_STOP_SOURCE,
    Phase.PREPARE: pb.PHASE_PREPARE,
    Phase.RESTORE: pb.PHASE_RESTORE,
    Phase.GPU_CHECKPOINT: pb.PHASE_GPU_CHECKPOINT,
    Phase.GPU_RESTORE: pb.PHASE_GPU_RESTORE,
    Phase.HOOK: pb.PHASE_HOOK,
    Phase.INJECT: pb.PHASE_INJECT,
    Phase.WAIT_READY: pb.PHASE_WAIT_READY,
    Phase.VERIFY: pb.PHASE_VERIFY,
    Phase.UPLOAD: pb.PHASE_UPLOAD,
    Phase.DOWNLOAD: pb.PHASE_DOWNLOAD,
}


_STATES = {
    State.STARTING: pb.INSTANCE_STATE_STARTING,
    State.READY: pb.INSTANCE_STATE_READY,
    State.RUNNING: pb.INSTANCE_STATE_RUNNING,
    State.EXITED: pb.INSTANCE_STATE_EXITED,
    State.STOPPED: pb.INSTANCE_STATE_STOPPED,
}


def progress(event: ProgressEvent, operation_id: str) -> pb.Progress:
    return pb.Progress(
        operation_id=operation_id,
        phase=_PHASES[event.phase],
        bytes_done=event.bytes_done,
        bytes_total=event.bytes_total,
        message=event.message,
        tree_frozen=event.frozen,
    )


def operation(op: RunningOperation) -> pb.OperationInfo:
    info = pb.OperationInfo(operation_id=op.id, kind=op.kind, pids=sorted(op.pids), snapshot_id=op.snapshot_id,
                            running_seconds=round(op.seconds, 3), cancellable=op.cancellable)
    if op.progress is not None:
        info.progress.CopyFrom(progress(op.progress, op.id))
    return info


def snapshot(m: Manifest, pinned: bool, hot: bool, damaged: list[str]) -> pb.Snapshot:
    msg = pb.Snapshot(
        id=m.id,
        name=m.name,
        labels=m.labels,
        root_pid=m.root_pid,
        criu_version=m.criu_version,
        kernel=m.kernel,
        hostname=m.hostname,
        raw_bytes=m.raw_bytes,
        stored_bytes=m.stored_bytes,
        new_bytes=m.new_bytes,
        pinned=pinned,
        hot=hot,
        checkpoint_seconds=m.checkpoint_seconds,
        leave_running=m.leave_running,
        damaged_chunks=damaged,
        tcp_established=m.tcp_established,
        ext_unix_sk=m.ext_unix_sk,
        link_remap=m.link_remap,
        link_remap_files=m.link_remap_files,
        processes=[
            pb.ProcessInfo(
                pid=p.pid, ppid=p.ppid, name=p.name, cmdline=list(p.cmdline), threads=p.threads, rss_bytes=p.rss_bytes
            )
            for p in m.processes
        ],
        files=[pb.ImageFile(name=f.name, size_bytes=f.size_bytes) for f in m.files],
        replicable=m.replicable,
        own_network_namespace=m.own_netns,
        namespace_ports=m.ns_ports,
        ready_probe=m.ready_probe.describe() if m.ready_probe else "",
        answer_check=m.answer_check.describe() if m.answer_check else "",
    )
    msg.created.FromNanoseconds(int(m.created * 1e9))
    if m.cgroup is not None:
        msg.source_cgroup.CopyFrom(pb.CgroupInfo(path=m.cgroup.path, limits=m.cgroup.limits))
    if m.gpu is not None:
        msg.gpu.CopyFrom(
            pb.GpuInfo(
                driver_version=m.gpu.driver_version,
                cuda_driver_api=m.gpu.cuda_driver_api,
                cuda_pids=list(m.gpu.cuda_pids),
                vram_bytes=m.gpu.vram,
                devices=[
                    pb.GpuDevice(index=d.index, name=d.name, uuid=d.uuid, memory_bytes=d.memory_bytes)
                    for d in m.gpu.devices
                ],
            )
        )
    return msg


def restore_result(outcome: RestoreOutcome, operation_id: str) -> pb.RestoreResult:
    return pb.RestoreResult(
        operation_id=operation_id,
        snapshot_id=outcome.snapshot_id,
        root_pid=outcome.root_pid,
        pids=outcome.pids,
        duration_seconds=outcome.seconds,
        cgroup=outcome.cgroup,
        log_path=str(outcome.log_path or ""),
        published=[pb.PublishedPort(port=port, address=address) for port, address in outcome.published.items()],
        gpus=outcome.gpus,
        pulled_bytes=outcome.pulled[0],
        pulled_chunks=outcome.pulled[1],
        instance_id=outcome.instance_id,
        ready_seconds=outcome.ready_seconds or 0.0,
        verified_digest=outcome.verified,
    )


def push_result(outcome: PushOutcome, operation_id: str) -> pb.PushResult:
    return pb.PushResult(
        operation_id=operation_id, snapshot_id=outcome.snapshot_id, chunks=outcome.chunks,
        uploaded_chunks=outcome.uploaded_chunks, uploaded_bytes=outcome.uploaded_bytes,
        already_there=outcome.already_there, duration_seconds=outcome.seconds,
    )


def pull_result(outcome: PullOutcome, operation_id: str) -> pb.PullResult:
    return pb.PullResult(
        operation_id=operation_id, snapshot_id=outcome.snapshot_id, chunks=outcome.chunks,
        fetched_chunks=outcome.fetched_chunks, fetched_bytes=outcome.fetched_bytes,
        already_there=outcome.already_there, duration_seconds=outcome.seconds,
    )


def remote_gc_report(report: RemoteGcReport) -> pb.CollectGarbageResponse:
    return pb.CollectGarbageResponse(chunks=report.chunks, bytes=report.bytes, dry_run=report.dry_run, remote=True,
                                     remote_snapshots=report.snapshots, stale_locks=report.stale_locks)


def gc_report(plan: GcReport) -> pb.CollectGarbageResponse:
    return pb.CollectGarbageResponse(
        expired_snapshots=plan.expired, chunks=plan.chunks, bytes=plan.bytes, dry_run=plan.dry_run
    )


def damaged_manifests(found: list[DamagedManifest]) -> list[pb.DamagedManifest]:
    return [pb.DamagedManifest(snapshot_id=d.snapshot_id, path=d.path, moved_to=d.moved_to, problem=d.problem)
            for d in found]


def fsck_report(report: FsckReport) -> pb.CheckStoreResponse:
    return pb.CheckStoreResponse(
        snapshots=report.snapshots,
        chunks_checked=report.chunks_checked,
        bytes_checked=report.bytes_checked,
        orphan_chunks=report.orphan_chunks,
        damaged_manifests=damaged_manifests(report.damaged_manifests),
        snapshots_gone=report.snapshots_gone,
        damage=[
            pb.ChunkDamage(snapshot_id=d.snapshot_id, file=d.file, offset=d.offset, chunk=d.chunk, problem=d.problem)
            for d in report.damage
        ],
    )


def instance(inst: Instance, held: GpuMemory) -> pb.Instance:
    """``held``: the GPU memory each process holds now (gpu_memory)."""
    msg = pb.Instance(
        id=inst.id, snapshot_id=inst.snapshot_id, snapshot_name=inst.snapshot_name, state=_STATES[inst.state],
        root_pid=inst.root_pid, gpus=inst.gpus, cgroup=inst.cgroup, log_path=inst.log_path,
        operation_id=inst.operation_id, detail=inst.detail, ready_seconds=inst.ready_seconds,
        processes=[pb.InstanceProcess(pid=pid, start_time=started, gpu_memory_bytes=held.get(pid, {}))
                   for pid, started in inst.processes],
        published=[pb.PublishedPort(port=port, address=address) for port, address in inst.published.items()],
    )
    for name, when in (("created", inst.created), ("ready", inst.ready), ("ended", inst.ended)):
        if when:
            getattr(msg, name).FromNanoseconds(int(when * 1e9))
    if inst.sandbox_pid:
        msg.sandbox.CopyFrom(pb.Sandbox(pid=inst.sandbox_pid, cgroup=inst.sandbox_cgroup))
    if inst.exit is not None:
        msg.exit_status.CopyFrom(pb.ExitStatus(known=inst.exit.known, code=inst.exit.code, signal=inst.exit.signal))
    return msg


def event(ev: Event, stream_id: str) -> pb.Event:
    msg = pb.Event(sequence=ev.sequence, stream_id=stream_id)
    msg.time.FromNanoseconds(int(ev.time * 1e9))
    note = ev.payload
    if isinstance(note, OperationNote):
        msg.operation.CopyFrom(pb.OperationEvent(operation_id=note.operation_id, kind=note.kind, state=note.state,
                                                 error=note.error, exit_code=note.exit_code, message=note.message))
        if note.progress is not None:
            msg.operation.progress.CopyFrom(progress(note.progress, note.operation_id))
    else:
        msg.instance.CopyFrom(instance(note, {}))
    return msg
