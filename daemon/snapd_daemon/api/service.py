"""The snapd.v1.Snapshots servicer: protobuf in (requests.py), domain calls, protobuf out (convert.py).

Long operations run in their own thread, never abandoned half-way: the
handler only relays their progress. A caller that goes away, cancels its
call or runs past its deadline cancels the operation, as CancelOperation
does: before its commit point it rolls back, after it it completes
(runtime/cancel.py). Every failure leaves through status.py.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import grpc
import structlog

from snapd.v1 import snapd_pb2 as pb
from snapd.v1 import snapd_pb2_grpc
from snapd_daemon import __version__, logs, metrics, remote
from snapd_daemon.api import convert, requests
from snapd_daemon.api.status import abort, bounded, internal
from snapd_daemon.checkpoint import checkpoint
from snapd_daemon.errors import SnapdError, SnapshotHasInstances, WatchersBusy
from snapd_daemon.host import filepages
from snapd_daemon.restore import restore
from snapd_daemon.runtime import Runtime, doctor
from snapd_daemon.runtime.cancel import CancelToken
from snapd_daemon.runtime.instances import Instance, gpu_memory
from snapd_daemon.runtime.progress import ProgressEvent, Reporter, Throttle
from snapd_daemon.runtime.registry import new_operation_id
from snapd_daemon.runtime.stopping import DEFAULT_GRACE, stop_instance
from snapd_daemon.snapshots import transfer
from snapd_daemon.snapshots.manifest import Manifest

log = structlog.get_logger()
# bytes per StreamData message of an export (gRPC's default limit is 4 MiB a message)
_STREAM_PIECE = 1 << 20
T = TypeVar("T")
_DONE = object()
_DEADLINE_SLACK = 1.0  # seconds
# how long a prefetch reads a snapshot's file pages at most (a hung network file is left behind)
_FILE_READ_SECONDS = 60.0
# WatchEvents streams open at once, at most: each holds one of the server's RPC threads
# (server/serve.py: 32) while open, and the others must stay for every other call
MAX_WATCHERS = 16


R = TypeVar("R")
Handler = Callable[[Any, Any, grpc.ServicerContext], R]


def _unary(handler: Handler[R]) -> Handler[R]:
    """Map a unary handler's failures: SnapdError to its status, anything else to
    INTERNAL with the daemon log holding the traceback."""

    @functools.wraps(handler)
    def wrapped(self: Any, request: Any, context: grpc.ServicerContext) -> R:
        try:
            return handler(self, request, context)
        except SnapdError as err:
            abort(context, err)
        except Exception as exc:
            log.exception(f"{handler.__name__}.crashed")
            abort(context, internal(exc, handler.__name__, self.rt.settings.state_dir))

    return wrapped


class SnapshotsServicer(snapd_pb2_grpc.SnapshotsServicer):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.started = time.monotonic()
        self._watchers = threading.BoundedSemaphore(MAX_WATCHERS)

    def _stream(
        self,
        kind: str,
        context: grpc.ServicerContext,
        work: Callable[[str, Reporter, CancelToken], T],
        wrap_progress: Callable[[pb.Progress], Any],
        wrap_result: Callable[[T, str], Any],
        undone: str,
    ) -> Iterator[Any]:
        """``undone``: what a rollback of this kind of operation leaves (for Cancelled)."""
        op_id = new_operation_id()
        events: queue.Queue[Any] = queue.Queue()
        token = CancelToken(op_id, undone)

        def call_ended() -> None:  # on every end of the call; a no-op once the operation has ended
            remaining = context.time_remaining()
            # the client gives up at its deadline, which may reach the server a little before its own
            timed_out = remaining is not None and remaining < _DEADLINE_SLACK
            token.cancel("its deadline passed" if timed_out else "its call was cancelled or its client went away")

        def run() -> None:
            structlog.contextvars.bind_contextvars(op=op_id, kind=kind)
            metrics.IN_FLIGHT.inc()
            try:
                registry = self.rt.registry

                def put(event: ProgressEvent) -> None:
                    registry.noted(op_id, event)
                    events.put(event)

                report = Throttle(put)
                with registry.cancellable(token, kind):
                    result = work(op_id, report, token)
                    report.flush()
                metrics.OPERATIONS.labels(kind, "ok").inc()
                events.put((_DONE, result))
            except SnapdError as err:
                metrics.OPERATIONS.labels(kind, type(err).__name__).inc()
                log.warning(f"{kind}.failed", error=type(err).__name__, message=bounded(err.message))
                events.put(err)
            except BaseException as exc:
                metrics.OPERATIONS.labels(kind, "internal").inc()
                log.exception(f"{kind}.crashed")
                events.put(internal(exc, f"{kind} {op_id}", self.rt.settings.state_dir))
                if not isinstance(exc, Exception):
                    raise
            finally:
                metrics.IN_FLIGHT.dec()

        if not context.add_callback(call_ended):  # the call has ended already
            call_ended()
        threading.Thread(target=run, name=op_id).start()
        while True:
            item = events.get()
            if isinstance(item, ProgressEvent):
                yield wrap_progress(convert.progress(item, op_id))
            elif isinstance(item, SnapdError):
                abort(context, item)
            else:
                yield wrap_result(item[1], op_id)
                return

    def _snapshot(self, m: Manifest) -> pb.Snapshot:
        catalog = self.rt.catalog
        return convert.snapshot(m, catalog.is_pinned(m.id), catalog.is_hot(m.id), catalog.damaged_chunks(m))

    def Checkpoint(self, request: pb.CheckpointRequest, context: grpc.ServicerContext) -> Iterator[pb.CheckpointEvent]:
        try:
            spec = requests.checkpoint_spec(request)
            settings = self.rt.settings.remote
            to_push = request.push if request.HasField("push") else settings is not None and settings.push_after_checkpoint
            if to_push:
                remote.require_remote(self.rt)
        except SnapdError as err:
            abort(context, err)
        started = time.monotonic()

        def result(m: Manifest, op_id: str) -> pb.CheckpointEvent:
            snap = self._snapshot(m)
            snap.operation_id, snap.duration_seconds = op_id, round(time.monotonic() - started, 3)
            if to_push:
                snap.push_operation_id = remote.background_push(self.rt, m.id)
            return pb.CheckpointEvent(snapshot=snap)

        yield from self._stream(
            "checkpoint",
            context,
            lambda op_id, report, cancel: checkpoint(self.rt, spec, op_id, report, cancel),
            lambda p: pb.CheckpointEvent(progress=p),
            result,
            "the process tree was left running and nothing was stored",
        )

    def Restore(self, request: pb.RestoreRequest, context: grpc.ServicerContext) -> Iterator[pb.RestoreEvent]:
        try:
            spec = requests.restore_spec(request)
        except SnapdError as err:
            abort(context, err)
        yield from self._stream(
            "restore",
            context,
            lambda op_id, report, cancel: restore(self.rt, spec, op_id, report, cancel),
            lambda p: pb.RestoreEvent(progress=p),
            lambda outcome, op_id: pb.RestoreEvent(result=convert.restore_result(outcome, op_id)),
            "nothing was restored and the snapshot's pids are free",
        )

    @_unary
    def ListSnapshots(self, request: pb.ListSnapshotsRequest, context: grpc.ServicerContext) -> pb.ListSnapshotsResponse:
        name = requests.snapshot_name(request.name)
        if request.remote:
            bucket = remote.require_remote(self.rt)
            found = [s.manifest for s in remote.remote_snapshots(bucket) if not name or s.manifest.name == name]
            return pb.ListSnapshotsResponse(
                snapshots=[convert.snapshot(m, False, False, []) for m in found],
                store_raw_bytes=sum(m.raw_bytes for m in found),
                store_stored_bytes=sum(m.stored_bytes for m in found),
                store_disk_bytes=sum(size for _, size, _ in bucket.chunks()),
            )
        snaps = self.rt.catalog.list(name)
        return pb.ListSnapshotsResponse(
            snapshots=[self._snapshot(m) for m in snaps],
            store_raw_bytes=sum(m.raw_bytes for m in snaps),
            store_stored_bytes=sum(m.stored_bytes for m in snaps),
            store_disk_bytes=self.rt.store.disk_bytes(),
            damaged_manifests=[] if name else convert.damaged_manifests(self.rt.catalog.damaged_manifests()),
        )

    @_unary
    def GetSnapshot(self, request: pb.GetSnapshotRequest, context: grpc.ServicerContext) -> pb.Snapshot:
        return self._snapshot(self.rt.catalog.get(requests.snapshot_ref(request.snapshot)))

    @contextmanager
    def _claimed(self, kind: str, ref: str) -> Iterator[tuple[str, Manifest]]:
        """Claim the snapshot ``ref`` names and yield (operation id, its manifest as of the claim)."""
        op_id = new_operation_id()
        found = self.rt.catalog.get(requests.snapshot_ref(ref))
        with self.rt.registry.claim(kind, op_id, snapshot_id=found.id):
            yield op_id, self.rt.catalog.get(found.id)

    @_unary
    def DeleteSnapshot(self, request: pb.DeleteSnapshotRequest, context: grpc.ServicerContext) -> pb.DeleteSnapshotResponse:
        with self._claimed("delete", request.snapshot) as (op_id, manifest):
            running = self.rt.instances.live_of(manifest.id)
            if running and not request.force:
                raise SnapshotHasInstances(snapshot_id=manifest.id, count=len(running),
                                           instances=", ".join(i.id for i in running))
            freed = self.rt.catalog.delete(manifest)
        log.info("snapshot.deleted", op=op_id, snapshot=manifest.id, freed_bytes=freed)
        return pb.DeleteSnapshotResponse(id=manifest.id, freed_bytes=freed)

    @_unary
    def PinSnapshot(self, request: pb.PinSnapshotRequest, context: grpc.ServicerContext) -> pb.Snapshot:
        with self._claimed("pin", request.snapshot) as (op_id, manifest):
            self.rt.catalog.pin(manifest, request.pinned)
        log.info("snapshot.pinned" if request.pinned else "snapshot.unpinned", op=op_id, snapshot=manifest.id)
        return self._snapshot(manifest)

    @_unary
    def Prefetch(self, request: pb.PrefetchRequest, context: grpc.ServicerContext) -> pb.PrefetchResponse:
        started = time.monotonic()
        with self._claimed("prefetch", request.snapshot) as (op_id, manifest):
            if request.drop:
                moved = self.rt.catalog.drop_prefetch(manifest)
            else:
                moved = self.rt.catalog.prefetch(manifest, lambda _done: None)
        files = 0 if request.drop else filepages.read_in(  # unclaimed: restores of it may start meanwhile
            manifest.file_pages, self.rt.settings.warm_file_bytes, self.rt.settings.io_threads, _FILE_READ_SECONDS)
        log.info("snapshot.prefetch", op=op_id, snapshot=manifest.id, drop=request.drop, bytes=moved,
                 file_bytes=files)
        return pb.PrefetchResponse(snapshot_id=manifest.id, bytes=moved, hot_bytes=self.rt.store.hot_bytes(),
                                   seconds=time.monotonic() - started, file_bytes=files)

    @_unary
    def CollectGarbage(
        self, request: pb.CollectGarbageRequest, context: grpc.ServicerContext
    ) -> pb.CollectGarbageResponse:
        if request.remote:
            return convert.remote_gc_report(remote.collect_garbage(self.rt, request.dry_run))
        with self.rt.registry.claim("gc", new_operation_id()):
            plan = self.rt.catalog.gc(request.keep_last, request.dry_run, lambda: frozenset(
                op.snapshot_id for op in self.rt.registry.in_flight() if op.snapshot_id))
        log.info("store.gc", expired=plan.expired, chunks=plan.chunks, bytes=plan.bytes, dry_run=plan.dry_run)
        return convert.gc_report(plan)

    @_unary
    def CheckStore(self, request: pb.CheckStoreRequest, context: grpc.ServicerContext) -> pb.CheckStoreResponse:
        catalog = self.rt.catalog
        targets = [catalog.get(requests.snapshot_ref(request.snapshot))] if request.snapshot else catalog.list()
        report = catalog.fsck(targets, everything=not request.snapshot)
        log.info("store.fsck", snapshots=report.snapshots, chunks=report.chunks_checked, damaged=len(report.damage),
                 damaged_manifests=len(report.damaged_manifests))
        return convert.fsck_report(report)

    @_unary
    def CancelOperation(self, request: pb.CancelOperationRequest,
                        context: grpc.ServicerContext) -> pb.CancelOperationResponse:
        op_id = requests.operation_id(request.operation_id)
        verdict = self.rt.registry.cancel(op_id, "at the caller's request")
        log.info("operation.cancel", operation=op_id, verdict=verdict)
        if verdict is None:
            return pb.CancelOperationResponse(cancelled=False, detail=f"no operation {op_id} is running "
                                              "(it has ended, or never existed)")
        if verdict:
            return pb.CancelOperationResponse(cancelled=True, detail=f"operation {op_id} rolls back; its call "
                                              "ends with CANCELLED")
        return pb.CancelOperationResponse(cancelled=False, detail=f"operation {op_id} is past its commit point "
                                          "and completes")

    @_unary
    def ListOperations(self, request: pb.ListOperationsRequest,
                       context: grpc.ServicerContext) -> pb.ListOperationsResponse:
        return pb.ListOperationsResponse(operations=[convert.operation(op) for op in self.rt.registry.running()])

    def ExportSnapshot(self, request: pb.ExportSnapshotRequest,
                       context: grpc.ServicerContext) -> Iterator[pb.StreamData]:
        try:
            with self._claimed("export", request.snapshot) as (op_id, manifest):
                log.info("snapshot.export", op=op_id, snapshot=manifest.id)
                buffer = bytearray()
                for piece in transfer.export_stream(self.rt.catalog, manifest, self.rt.settings.fleet_keys):
                    buffer += piece
                    while len(buffer) >= _STREAM_PIECE:
                        yield pb.StreamData(data=bytes(buffer[:_STREAM_PIECE]))
                        del buffer[:_STREAM_PIECE]
                yield pb.StreamData(data=bytes(buffer))
        except SnapdError as err:
            abort(context, err)
        except Exception as exc:
            log.exception("ExportSnapshot.crashed")
            abort(context, internal(exc, "ExportSnapshot", self.rt.settings.state_dir))

    @_unary
    def ImportSnapshot(self, request_iterator: Iterator[pb.StreamData],
                       context: grpc.ServicerContext) -> pb.Snapshot:
        op_id = new_operation_id()
        registry = self.rt.registry
        manifest, new = transfer.import_stream(
            self.rt.catalog, (piece.data for piece in request_iterator),
            lambda snapshot_id: registry.claim("import", op_id, snapshot_id=snapshot_id), self.rt.settings.fleet_keys)
        log.info("snapshot.import", op=op_id, snapshot=manifest.id, new=new)
        snap = self._snapshot(manifest)
        snap.already_present = not new
        return snap

    @_unary
    def GetStatus(self, request: pb.GetStatusRequest, context: grpc.ServicerContext) -> pb.DaemonStatus:
        report = doctor.diagnose(self.rt)
        quarantine = self.rt.store.quarantine
        return pb.DaemonStatus(
            version=__version__,
            pid=self.rt.daemon_pid,
            uptime_seconds=time.monotonic() - self.started,
            criu_path=self.rt.criu.path,
            criu_version=self.rt.criu.version,
            kernel=report.kernel,
            state_dir=str(self.rt.settings.state_dir),
            state_dir_free_bytes=self.rt.store.free_bytes(),
            snapshots=len(self.rt.catalog.list()),
            operations_in_flight=len(self.rt.registry.in_flight()),
            gpu_driver_version=report.gpu_driver,
            checks=[pb.Check(name=c.name, ok=c.ok, detail=c.detail, warning=c.warning) for c in report.checks],
            recovered_operations=self.rt.recovered_operations,
            quarantined_manifests=quarantine.manifest_count(),
            quarantined_chunks=len(quarantine.chunk_ids()),
            remote=self.rt.settings.remote.where if self.rt.settings.remote else "",
            log_lines_dropped=logs.dropped(),
        )

    def PushSnapshot(self, request: pb.PushRequest, context: grpc.ServicerContext) -> Iterator[pb.PushEvent]:
        yield from self._remote_stream(
            "push", request.snapshot, context, remote.push, pb.PushEvent, convert.push_result,
            "the snapshot was not published remotely; chunks already uploaded are reused by the next push",
        )

    def PullSnapshot(self, request: pb.PullRequest, context: grpc.ServicerContext) -> Iterator[pb.PullEvent]:
        yield from self._remote_stream(
            "pull", request.snapshot, context, remote.pull, pb.PullEvent, convert.pull_result,
            "nothing of the snapshot was kept locally",
        )

    def _remote_stream(self, kind: str, snapshot: str, context: grpc.ServicerContext, run: Callable[..., Any],
                       event: Callable[..., Any], result: Callable[[Any, str], Any], rollback: str) -> Iterator[Any]:
        """A push or pull of ``snapshot``: refused at once without a remote tier, then streamed."""
        try:
            ref = requests.snapshot_ref(snapshot)
            remote.require_remote(self.rt)
        except SnapdError as err:
            abort(context, err)
        yield from self._stream(
            kind, context, lambda op_id, report, cancel: run(self.rt, ref, op_id, report, cancel),
            lambda p: event(progress=p), lambda outcome, op_id: event(result=result(outcome, op_id)), rollback,
        )

    # -- instances ------------------------------------------------------------

    def _instances(self, found: list[Instance]) -> list[pb.Instance]:
        held = gpu_memory(found)
        return [convert.instance(i, held) for i in found]

    @_unary
    def ListInstances(self, request: pb.ListInstancesRequest,
                      context: grpc.ServicerContext) -> pb.ListInstancesResponse:
        return pb.ListInstancesResponse(instances=self._instances(self.rt.instances.list(request.all)))

    @_unary
    def GetInstance(self, request: pb.GetInstanceRequest, context: grpc.ServicerContext) -> pb.Instance:
        return self._instances([self.rt.instances.get(requests.instance_ref(request.instance))])[0]

    @_unary
    def StopInstance(self, request: pb.StopInstanceRequest, context: grpc.ServicerContext) -> pb.Instance:
        grace = float(request.grace_seconds) if request.HasField("grace_seconds") else DEFAULT_GRACE
        stopped = stop_instance(self.rt.instances, requests.instance_ref(request.instance), grace)
        return self._instances([stopped])[0]

    def WatchEvents(self, request: pb.WatchEventsRequest, context: grpc.ServicerContext) -> Iterator[pb.Event]:
        events = self.rt.events
        if not self._watchers.acquire(blocking=False):
            abort(context, WatchersBusy(limit=MAX_WATCHERS))
        try:
            for event in events.follow(request.after_sequence, request.stream_id, context.is_active):
                yield convert.event(event, events.stream_id)
        except SnapdError as err:
            abort(context, err)
        finally:
            self._watchers.release()
