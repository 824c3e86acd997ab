"""Every API call once: what each method sends, what it returns, and its deadline. The sync
client (client.py) and the asyncio client (aio.py) are this surface over two transports.

A transport implements five primitives: ``_unary`` (one request, one answer, or a
stream of requests), ``_follow`` (a stream of Progress events ending in a
result), ``_stream`` (a server stream's messages: an iterator, or an async one),
``_export`` (a stream of byte pieces into a sink) and ``_gather`` (thunks run at
once, a result or a SnapdClientError each). In the sync client each method
returns its result; in the asyncio client each returns an awaitable of the same
result (a server stream: an async iterator). A new RPC is one method here.

Deadlines: every method takes ``timeout`` (seconds; None: no deadline). Left out,
it is the client's ``timeout`` if one was given to its constructor, else the
default of the call's kind below. A call past its deadline raises
DeadlineExceeded; an operation it started rolls back unless past its commit point.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO

from snapd.v1 import snapd_pb2 as pb
from snapd_client.errors import SnapdClientError

ProgressCallback = Callable[[pb.Progress], None]
# Called with the operation id when KeyboardInterrupt arrives while a stream is followed
# (sync client only); following goes on after it returns (raise or exit from it to stop).
InterruptCallback = Callable[[str], None]
# Bytes per StreamData message of an export or import (well below gRPC's 4 MiB message limit).
STREAM_PIECE = 1 << 20

# Default deadlines per kind of call, in seconds:
# a look at the daemon's state (status, list, get, operations, cancel, pin)
QUERY = 30.0
# store work that may wait for the store's lock behind running operations (delete, prefetch, gc)
STORE = 600.0
# what moves a process tree or a snapshot (checkpoint, restore, replicas, push, pull, fsck, export, import)
OPERATION = 3600.0


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


# ``timeout`` left out: the client's, else the kind's default
DEFAULT: Any = _Default()
Timeout = float | None


class Calls(ABC):
    """The API's methods over a transport (SnapdClient, AsyncSnapdClient)."""

    target: str
    # the constructor's timeout: every call's deadline unless the call gives one (DEFAULT: per kind)
    timeout: Timeout

    def _deadline(self, timeout: Timeout, kind: float) -> float | None:
        if timeout is not DEFAULT:
            return timeout
        return kind if self.timeout is DEFAULT else self.timeout

    # -- the transport --------------------------------------------------------------------------

    @abstractmethod
    def _unary(self, method: str, request: Any, deadline: float | None) -> Any:
        """``method``'s answer to ``request`` (an iterator of requests for a client-streaming call)."""

    @abstractmethod
    def _follow(self, method: str, request: Any, final_field: str, deadline: float | None,
                on_progress: ProgressCallback | None, on_interrupt: InterruptCallback | None) -> Any:
        """``final_field`` of the event that ends ``method``'s stream; each Progress event before it
        goes to ``on_progress``."""

    @abstractmethod
    def _stream(self, method: str, request: Any, deadline: float | None) -> Any:
        """The messages of ``method``'s server stream, as they come (failures raised as SnapdClientError)."""

    @abstractmethod
    def _export(self, request: pb.ExportSnapshotRequest, sink: BinaryIO, deadline: float | None) -> Any:
        """The pieces of an ExportSnapshot stream written to ``sink``; the bytes written."""

    @abstractmethod
    def _gather(self, thunks: list[Callable[[], Any]]) -> Any:
        """The thunks run at once: per thunk, in order, its result or its SnapdClientError."""

    # -- operations -----------------------------------------------------------------------------

    def checkpoint(
        self,
        pid: int,
        *,
        name: str = "",
        labels: dict[str, str] | None = None,
        leave_running: bool = False,
        pre_checkpoint_hook: list[str] | None = None,
        hook_timeout_seconds: int = 0,
        cuda_lock_timeout_ms: int = 0,
        keep_hot: bool = False,
        tcp_established: bool = False,
        ext_unix_sk: bool = False,
        link_remap: bool = False,
        push: bool | None = None,
        ready_http: str = "",
        ready_status: int = 0,
        ready_cmd: str = "",
        ready_timeout_ms: int = 0,
        verify_http: str = "",
        verify_body: str = "",
        verify_field: str = "",
        verify_timeout_ms: int = 0,
        timeout: Timeout = DEFAULT,
        on_progress: ProgressCallback | None = None,
        on_interrupt: InterruptCallback | None = None,
    ) -> pb.Snapshot:
        """Checkpoint the process tree of ``pid`` into a new snapshot and return it (with
        ``operation_id`` and ``duration_seconds`` set). The tree is stopped once the snapshot
        is durable unless ``leave_running``. ``pre_checkpoint_hook``: argv the daemon runs
        before anything is frozen. ``keep_hot``: also keep it decompressed in RAM.
        ``tcp_established``: dump established TCP connections instead of refusing the tree;
        ``ext_unix_sk``: likewise unix sockets connected to processes outside the tree;
        ``link_remap``: likewise open files unlinked while another name links them.
        ``push``: upload the snapshot to the remote tier in the background once durable
        (None: the daemon's push_after_checkpoint setting); ``Snapshot.push_operation_id``
        names that upload. ``ready_http`` (GET, passes on ``ready_status``, 0: 200) or ``ready_cmd``:
        the readiness probe restores wait for (``ready_timeout_ms``, 0: 60 s).
        ``verify_http`` + ``verify_body``: the answer check, POSTed now to the live server and its
        answer's digest recorded (``verify_field``: of that top-level JSON key only;
        ``verify_timeout_ms``, 0: 30 s); docs/readiness.md. ``on_progress`` gets every
        Progress event (``phase_name(p.phase)``, bytes, ``tree_frozen``); ``on_interrupt``: see
        ``SnapdClient._follow``. Deadline: OPERATION."""
        request = pb.CheckpointRequest(
            pid=pid, name=name, labels=labels or {}, leave_running=leave_running,
            pre_checkpoint_hook=pb.Hook(argv=pre_checkpoint_hook or [], timeout_seconds=hook_timeout_seconds),
            cuda_lock_timeout_ms=cuda_lock_timeout_ms, keep_hot=keep_hot, tcp_established=tcp_established,
            ext_unix_sk=ext_unix_sk, link_remap=link_remap, push=push,
            ready_probe=pb.ReadyProbe(http_url=ready_http, http_status=ready_status, command=ready_cmd,
                                      timeout_ms=ready_timeout_ms) if ready_http or ready_cmd else None,
            verify=pb.AnswerCheck(http_url=verify_http, body=verify_body, json_field=verify_field,
                                  timeout_ms=verify_timeout_ms) if verify_http else None,
        )
        return self._follow("Checkpoint", request, "snapshot", self._deadline(timeout, OPERATION), on_progress,
                            on_interrupt)

    def restore(
        self,
        snapshot: str,
        *,
        wait_for_exit_seconds: int | None = None,
        gpu_uuid_map: dict[str, str] | None = None,
        gpu_policy: str = "",
        post_restore_hook: list[str] | None = None,
        hook_timeout_seconds: int = 0,
        cgroup: pb.CgroupSpec | None = None,
        log_name: str = "",
        tcp: int = pb.TCP_RESTORE_CLOSE,
        publish_host: str = "",
        into_pid: int = 0,
        wait_ready: bool | None = None,
        verify: bool = False,
        timeout: Timeout = DEFAULT,
        on_progress: ProgressCallback | None = None,
        on_interrupt: InterruptCallback | None = None,
    ) -> pb.RestoreResult:
        """Restore ``snapshot`` (an id, a unique id prefix, or a name: its newest snapshot) as a
        live process tree with its original pids; returns where it runs.
        ``wait_for_exit_seconds``: how long to wait for old holders of its pids (None: the
        daemon's default, 10 s; 0: no wait).
        ``gpu_uuid_map``: snapshot GPU UUID -> this host's. ``gpu_policy``: "shared" (a GPU of
        the model with room for what the snapshot held there), "exclusive" (an idle GPU), or ""
        (the daemon's setting); docs/gpu-placement.md. ``post_restore_hook``: argv run once the
        tree is back (its failure kills the tree). ``cgroup``: place the whole restored tree in
        this group below the daemon's cgroup root. ``log_name``: file in the daemon's restore log
        directory that stdout/stderr pipes of the tree whose reader is gone write into (default
        "<snapshot id>.log"; see ``RestoreResult.log_path``). ``tcp``: TCP_RESTORE_CLOSE (default)
        or TCP_RESTORE_REESTABLISH, for a snapshot taken with ``tcp_established``.
        ``publish_host``: the host IP a snapshot with its own network namespace publishes its
        ports on (default 127.0.0.1; ``RestoreResult.published``). ``into_pid``: restore into the
        container or pod sandbox of this host pid (its network, UTS and IPC namespaces, a group below
        its cgroup; docs/pods.md). ``wait_ready``: end the call once the snapshot's readiness probe
        passes (None: when it has one; False: return at running, the daemon probes on); ``verify``:
        then check its recorded answer (``RestoreResult.verified_digest``); a failure of either kills
        the tree and raises ReadyTimeout or VerifyMismatch. Deadline: OPERATION."""
        request = pb.RestoreRequest(
            snapshot=snapshot, wait_for_exit_seconds=wait_for_exit_seconds, gpu_uuid_map=gpu_uuid_map or {},
            gpu_policy=gpu_policy_value(gpu_policy),
            post_restore_hook=pb.Hook(argv=post_restore_hook or [], timeout_seconds=hook_timeout_seconds),
            cgroup=cgroup, log_name=log_name, tcp=tcp, publish_host=publish_host,  # type: ignore[arg-type]
            into_pid=into_pid, wait_ready=wait_ready, verify=verify,
        )
        return self._follow("Restore", request, "result", self._deadline(timeout, OPERATION), on_progress,
                            on_interrupt)

    def restore_replicas(self, snapshot: str, count: int, **options: Any) -> list[pb.RestoreResult | SnapdClientError]:
        """``count`` Restore calls of ``snapshot`` at once (``options`` as ``restore`` takes them);
        per replica, in order, its result or its error. Only a replicable snapshot (taken of a
        tree started with `snapd run`) restores more than once at a time. Each replica is all or
        nothing on its own: a failed one is rolled back by the daemon, those that succeeded run on."""
        return self._gather([lambda: self.restore(snapshot, **options) for _ in range(count)])

    def cancel(self, operation_id: str, *, timeout: Timeout = DEFAULT) -> pb.CancelOperationResponse:
        """Ask a running checkpoint or restore to roll back; ``cancelled`` says whether it will
        (False: it is past its commit point and completes, or it is not running; see ``detail``)."""
        return self._unary("CancelOperation", pb.CancelOperationRequest(operation_id=operation_id),
                           self._deadline(timeout, QUERY))

    def operations(self, *, timeout: Timeout = DEFAULT) -> pb.ListOperationsResponse:
        """The operations running now, with their latest progress."""
        return self._unary("ListOperations", pb.ListOperationsRequest(), self._deadline(timeout, QUERY))

    # -- instances ------------------------------------------------------------------------------

    def instances(self, all: bool = False, *, timeout: Timeout = DEFAULT) -> pb.ListInstancesResponse:
        """The instances whose tree runs (``all``: also the ended ones the daemon keeps), oldest first."""
        return self._unary("ListInstances", pb.ListInstancesRequest(all=all), self._deadline(timeout, QUERY))

    def instance(self, instance: str, *, timeout: Timeout = DEFAULT) -> pb.Instance:
        """One instance by id or unique id prefix ("in-" may be left out)."""
        return self._unary("GetInstance", pb.GetInstanceRequest(instance=instance), self._deadline(timeout, QUERY))

    def stop_instance(self, instance: str, grace_seconds: int | None = None, *,
                      timeout: Timeout = DEFAULT) -> pb.Instance:
        """SIGTERM to the instance's whole tree, SIGKILL after ``grace_seconds`` (None: 10 s);
        returns once every pid is gone (and its GPU memory freed). Deadline: STORE."""
        return self._unary("StopInstance", pb.StopInstanceRequest(instance=instance, grace_seconds=grace_seconds),
                           self._deadline(timeout, STORE))

    def events(self, after_sequence: int = 0, stream_id: str = "") -> Any:
        """Operation phases and instance state changes as they happen, until the caller stops
        iterating (or the daemon stops): an iterator (an async one in the asyncio client).
        ``after_sequence`` (with the ``stream_id`` it came from): resume after that event;
        0: only new events. No deadline applies."""
        return self._stream("WatchEvents", pb.WatchEventsRequest(after_sequence=after_sequence, stream_id=stream_id),
                            None)

    # -- snapshots ------------------------------------------------------------------------------

    def export_snapshot(self, snapshot: str, sink: BinaryIO, *, timeout: Timeout = DEFAULT) -> int:
        """Write ``snapshot`` as one export stream (manifest + its chunks, as stored) to ``sink``;
        returns the bytes written. ``import_snapshot`` on any daemon takes it back in."""
        return self._export(pb.ExportSnapshotRequest(snapshot=snapshot), sink, self._deadline(timeout, OPERATION))

    def import_snapshot(self, source: BinaryIO | Iterable[bytes], *, timeout: Timeout = DEFAULT) -> pb.Snapshot:
        """Send an export stream (a binary file, or an iterable of bytes) to the daemon; returns
        the snapshot, which is visible only once the whole stream was verified and stored."""
        pieces: Iterable[bytes] = (iter(lambda: source.read(STREAM_PIECE), b"")  # type: ignore[union-attr]
                                   if hasattr(source, "read") else source)
        return self._unary("ImportSnapshot", (pb.StreamData(data=p) for p in pieces),
                           self._deadline(timeout, OPERATION))

    def list(self, name: str = "", remote: bool = False, *, timeout: Timeout = DEFAULT) -> pb.ListSnapshotsResponse:
        """Complete snapshots, oldest first (only those named ``name`` if given), with size sums:
        the local store's, or with ``remote`` the remote tier's."""
        return self._unary("ListSnapshots", pb.ListSnapshotsRequest(name=name, remote=remote),
                           self._deadline(timeout, QUERY))

    def get(self, snapshot: str, *, timeout: Timeout = DEFAULT) -> pb.Snapshot:
        """Everything recorded about ``snapshot`` (id, unique id prefix, or name)."""
        return self._unary("GetSnapshot", pb.GetSnapshotRequest(snapshot=snapshot), self._deadline(timeout, QUERY))

    def delete(self, snapshot: str, force: bool = False, *, timeout: Timeout = DEFAULT) -> pb.DeleteSnapshotResponse:
        """Delete ``snapshot`` and the chunks only it used (refused for a pinned one, and, unless
        ``force``, for one whose instances still run: SnapshotHasInstances)."""
        return self._unary("DeleteSnapshot", pb.DeleteSnapshotRequest(snapshot=snapshot, force=force),
                           self._deadline(timeout, STORE))

    def pin(self, snapshot: str, pinned: bool = True, *, timeout: Timeout = DEFAULT) -> pb.Snapshot:
        """Pin (gc and delete leave it alone) or, with ``pinned=False``, unpin ``snapshot``."""
        return self._unary("PinSnapshot", pb.PinSnapshotRequest(snapshot=snapshot, pinned=pinned),
                           self._deadline(timeout, QUERY))

    def prefetch(self, snapshot: str, drop: bool = False, *, timeout: Timeout = DEFAULT) -> pb.PrefetchResponse:
        """Keep ``snapshot``'s chunks decompressed in RAM for fast restores (``drop``: free them)."""
        return self._unary("Prefetch", pb.PrefetchRequest(snapshot=snapshot, drop=drop),
                           self._deadline(timeout, STORE))

    def gc(self, *, keep_last: int = 0, dry_run: bool = False, remote: bool = False,
           timeout: Timeout = DEFAULT) -> pb.CollectGarbageResponse:
        """Expire all but the newest ``keep_last`` snapshots of each name (0: expire none; pinned
        and unnamed ones are kept), then remove unreferenced chunks; ``dry_run`` only plans.
        ``remote``: the remote tier's unreferenced chunks instead (keep_last does not apply)."""
        return self._unary("CollectGarbage", pb.CollectGarbageRequest(keep_last=keep_last, dry_run=dry_run,
                                                                      remote=remote), self._deadline(timeout, STORE))

    def push(self, snapshot: str, *, timeout: Timeout = DEFAULT, on_progress: ProgressCallback | None = None,
             on_interrupt: InterruptCallback | None = None) -> pb.PushResult:
        """Upload a local snapshot to the remote tier (chunks the bucket lacks, then its manifest)."""
        return self._follow("PushSnapshot", pb.PushRequest(snapshot=snapshot), "result",
                            self._deadline(timeout, OPERATION), on_progress, on_interrupt)

    def pull(self, snapshot: str, *, timeout: Timeout = DEFAULT, on_progress: ProgressCallback | None = None,
             on_interrupt: InterruptCallback | None = None) -> pb.PullResult:
        """Download a remote snapshot into the local store (chunks it lacks, verified)."""
        return self._follow("PullSnapshot", pb.PullRequest(snapshot=snapshot), "result",
                            self._deadline(timeout, OPERATION), on_progress, on_interrupt)

    def fsck(self, snapshot: str = "", *, timeout: Timeout = DEFAULT) -> pb.CheckStoreResponse:
        """Read and verify every chunk of ``snapshot`` (default: every snapshot); bad chunks go to
        quarantine and are listed in ``damage``."""
        return self._unary("CheckStore", pb.CheckStoreRequest(snapshot=snapshot), self._deadline(timeout, OPERATION))

    def status(self, *, timeout: Timeout = DEFAULT) -> pb.DaemonStatus:
        """The daemon's version, state and host checks (CRIU, kernel, cgroups, disk, GPU, store)."""
        return self._unary("GetStatus", pb.GetStatusRequest(), self._deadline(timeout, QUERY))


_GPU_POLICIES = {"": pb.GPU_POLICY_DEFAULT, "shared": pb.GPU_POLICY_SHARED, "exclusive": pb.GPU_POLICY_EXCLUSIVE}


def gpu_policy_value(policy: str) -> int:
    """The GpuPolicy value of "shared", "exclusive" or "" (the daemon's setting); ValueError otherwise."""
    if policy not in _GPU_POLICIES:
        raise ValueError(f"gpu_policy {policy!r} is not 'shared', 'exclusive' or '' (the daemon's setting)")
    return _GPU_POLICIES[policy]


def stream_event(event: Any, final_field: str, on_progress: ProgressCallback | None) -> tuple[bool, Any]:
    """One event of a followed stream: (True, the result) when it holds ``final_field``, else
    (False, operation id of its progress) after passing the progress to ``on_progress``."""
    if event.HasField("progress"):
        if on_progress:
            on_progress(event.progress)
        return False, event.progress.operation_id
    if event.HasField(final_field):
        return True, getattr(event, final_field)
    return False, ""
