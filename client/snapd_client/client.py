"""A typed client for schedulers and the CLI.

    client = SnapdClient()                      # unix:///run/gpu-snapd/snapd.sock
    snap = client.checkpoint(pid, name="llama-8b")
    result = client.restore("llama-8b", cgroup=CgroupSpec(path="inference/llama-8b", create=True))
    print(result.root_pid, result.cgroup)

    remote = SnapdClient("gpu-host-7:7443", tls=TlsFiles(ca=..., cert=..., key=...))
    local = SnapdClient("/run/gpu-snapd/snapd.sock")   # a plain socket path works too

Every failure is raised as SnapdClientError, carrying the gRPC status, the
daemon's error class and the CLI exit code for it.

Checkpoint and restore name their operation in every progress event
(``Progress.operation_id``); ``cancel`` asks the daemon to roll it back, which
it does only before the operation's commit point. Cancelling the call itself
(its deadline passing, the client going away) has the same effect.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import grpc

from snapd.v1 import snapd_pb2 as pb
from snapd.v1 import snapd_pb2_grpc

DEFAULT_TARGET = "unix:///run/gpu-snapd/snapd.sock"
# Exit code when the daemon cannot be reached at all.
EXIT_UNREACHABLE = 3
ProgressCallback = Callable[[pb.Progress], None]
# Called with the operation id when KeyboardInterrupt arrives while a stream is followed;
# following goes on after it returns (raise or exit from it to stop).
InterruptCallback = Callable[[str], None]
CgroupSpec = pb.CgroupSpec
# Progress.phase values (Phase.Name(p.phase) == "PHASE_DUMP"); phase_name() gives "dump".
Phase = pb.Phase
TcpRestore = pb.TcpRestore
# Bytes per StreamData message of an export or import (well below gRPC's 4 MiB message limit).
STREAM_PIECE = 1 << 20


def phase_name(phase: int) -> str:
    """The short name of a Progress.phase value: "dump", "commit", "inject", ... ("unknown-N"
    for a value this client does not know, from a newer daemon)."""
    try:
        return str(Phase.Name(phase)).removeprefix("PHASE_").lower().replace("_", "-")
    except ValueError:
        return f"unknown-{phase}"


def normalize_target(target: str) -> str:
    """A gRPC target from what a user typed: a plain socket path ("/run/x.sock", "./x.sock")
    becomes unix:///absolute/path; anything else (unix://..., host:port) is kept."""
    if target.startswith(("/", "./", "../")) or target.endswith(".sock") and ":" not in target:
        return "unix://" + os.path.abspath(target)
    return target


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a daemon's mutual-TLS TCP port: the CA that signed the daemon's
    certificate (which must name the host of the target), and this client's certificate and key."""

    ca: Path
    cert: Path
    key: Path

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(), private_key=self.key.read_bytes(),
            certificate_chain=self.cert.read_bytes(),
        )


class SnapdClientError(Exception):
    """A failed call: ``code`` (gRPC status), ``error_class`` (the daemon's error class, e.g.
    "SnapshotNotFound"; "Unreachable" when no daemon answered), ``exit_code`` (the CLI's exit
    code for it) and ``message`` (what went wrong and what to do)."""

    def __init__(self, code: grpc.StatusCode, message: str, error_class: str, exit_code: int) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.error_class = error_class
        self.exit_code = exit_code

    @classmethod
    def from_rpc(cls, err: grpc.RpcError, target: str) -> SnapdClientError:
        code: grpc.StatusCode = err.code()  # type: ignore[attr-defined]
        trailers = dict(err.trailing_metadata() or ())  # type: ignore[attr-defined]
        if "snapd-exit-code" in trailers:
            return cls(code, err.details(), trailers.get("snapd-error", ""), int(trailers["snapd-exit-code"]))  # type: ignore[attr-defined]
        if code == grpc.StatusCode.UNAVAILABLE:
            return cls(
                code,
                f"cannot reach the snapd daemon at {target}: {err.details()}. "  # type: ignore[attr-defined]
                "Is `snapd serve` running (systemctl status gpu-snapd)? Set --target / SNAPD_TARGET otherwise.",
                "Unreachable",
                EXIT_UNREACHABLE,
            )
        return cls(code, f"{code.name}: {err.details()}", "", 1)  # type: ignore[attr-defined]


def _read_stream(events: Iterator[Any], into: queue.SimpleQueue[Any]) -> None:
    """Put each event of a response stream into ``into``, then None, or the RpcError it ended with."""
    try:
        for event in events:
            into.put(event)
        into.put(None)
    except grpc.RpcError as err:
        into.put(err)


def default_target() -> str:
    """$SNAPD_TARGET, else the system daemon's socket."""
    return os.environ.get("SNAPD_TARGET", DEFAULT_TARGET)


class SnapdClient:
    """One connection to a snapd daemon; use it as a context manager (or call ``close``).
    Each method is one API call; every failure raises SnapdClientError."""

    def __init__(self, target: str | None = None, timeout: float | None = None, tls: TlsFiles | None = None) -> None:
        """``target``: a socket path, a gRPC target such as unix:///run/gpu-snapd/snapd.sock, or
        gpu-host-7:7443 (TCP with ``tls``; plain TCP only reaches a daemon serving
        --insecure-loopback-tcp); default $SNAPD_TARGET, else the system socket. ``timeout``:
        seconds each call may take (None: no limit); a call past it is cancelled, and so is
        its operation unless past its commit point."""
        self.target = normalize_target(target or default_target())
        self.timeout = timeout
        if tls is None:
            self._channel = grpc.insecure_channel(self.target)
        else:
            self._channel = grpc.secure_channel(self.target, tls.credentials())
        self._stub = snapd_pb2_grpc.SnapshotsStub(self._channel)

    def close(self) -> None:
        """Close the connection."""
        self._channel.close()

    def __enter__(self) -> SnapdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unary(self, method: Callable[..., Any], request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as err:
            raise SnapdClientError.from_rpc(err, self.target) from None

    def _follow(self, events: Any, final_field: str, on_progress: ProgressCallback | None,
                on_interrupt: InterruptCallback | None = None) -> Any:
        """The stream's result. The stream is read on a helper thread, so that a KeyboardInterrupt
        never lands inside gRPC. With ``on_interrupt``, a KeyboardInterrupt calls it with the
        operation id (as soon as the first progress event names it) and the stream is followed
        on to its end; a second one before the id is known, or any without ``on_interrupt``,
        cancels the call and propagates."""
        received: queue.SimpleQueue[Any] = queue.SimpleQueue()
        threading.Thread(target=_read_stream, args=(events, received), name="stream", daemon=True).start()
        operation_id = ""
        pending = False  # interrupted before the operation id was known
        while True:
            try:
                if pending and operation_id and on_interrupt is not None:
                    pending = False
                    on_interrupt(operation_id)
                event = received.get()
                if isinstance(event, grpc.RpcError):
                    raise SnapdClientError.from_rpc(event, self.target)
                if event is None:
                    raise SnapdClientError(grpc.StatusCode.INTERNAL, "stream ended without a result", "", 1)
                if event.HasField("progress"):
                    operation_id = event.progress.operation_id
                    if on_progress:
                        on_progress(event.progress)
                elif event.HasField(final_field):
                    return getattr(event, final_field)
            except KeyboardInterrupt:
                if on_interrupt is None or (pending and not operation_id):
                    events.cancel()
                    raise
                pending = True

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
        names that upload. ``on_progress`` gets every Progress event (``phase_name(p.phase)``,
        bytes, ``tree_frozen``); ``on_interrupt``: see ``_follow``."""
        request = pb.CheckpointRequest(
            pid=pid, name=name, labels=labels or {}, leave_running=leave_running,
            pre_checkpoint_hook=pb.Hook(argv=pre_checkpoint_hook or [], timeout_seconds=hook_timeout_seconds),
            cuda_lock_timeout_ms=cuda_lock_timeout_ms, keep_hot=keep_hot, tcp_established=tcp_established,
            ext_unix_sk=ext_unix_sk, link_remap=link_remap, push=push,
        )
        result: pb.Snapshot = self._follow(self._stub.Checkpoint(request, timeout=self.timeout), "snapshot", on_progress,
                                           on_interrupt)
        return result

    def restore(
        self,
        snapshot: str,
        *,
        wait_for_exit_seconds: int = 0,
        gpu_uuid_map: dict[str, str] | None = None,
        post_restore_hook: list[str] | None = None,
        hook_timeout_seconds: int = 0,
        cgroup: CgroupSpec | None = None,
        log_name: str = "",
        tcp: int = pb.TCP_RESTORE_CLOSE,
        publish_host: str = "",
        on_progress: ProgressCallback | None = None,
        on_interrupt: InterruptCallback | None = None,
    ) -> pb.RestoreResult:
        """Restore ``snapshot`` (an id, a unique id prefix, or a name: its newest snapshot) as a
        live process tree with its original pids; returns where it runs.
        ``wait_for_exit_seconds``: how long to wait for old holders of its pids (0: 10 s).
        ``gpu_uuid_map``: snapshot GPU UUID -> this host's. ``post_restore_hook``: argv run
        once the tree is back (its failure kills the tree). ``cgroup``: place the whole restored tree in this group below the daemon's cgroup root.
        ``log_name``: file in the daemon's restore log directory that stdout/stderr pipes of
        the tree whose reader is gone write into (default "<snapshot id>.log"; see
        ``RestoreResult.log_path``). ``tcp``: TCP_RESTORE_CLOSE (default) or
        TCP_RESTORE_REESTABLISH, for a snapshot taken with ``tcp_established``. ``publish_host``:
        the host IP a snapshot with its own network namespace publishes its ports on (default
        127.0.0.1; ``RestoreResult.published``)."""
        request = pb.RestoreRequest(
            snapshot=snapshot, wait_for_exit_seconds=wait_for_exit_seconds, gpu_uuid_map=gpu_uuid_map or {},
            post_restore_hook=pb.Hook(argv=post_restore_hook or [], timeout_seconds=hook_timeout_seconds),
            cgroup=cgroup, log_name=log_name, tcp=tcp, publish_host=publish_host,  # type: ignore[arg-type]
        )
        result: pb.RestoreResult = self._follow(self._stub.Restore(request, timeout=self.timeout), "result", on_progress,
                                                on_interrupt)
        return result

    def cancel(self, operation_id: str) -> pb.CancelOperationResponse:
        """Ask a running checkpoint or restore to roll back; ``cancelled`` says whether it will
        (False: it is past its commit point and completes, or it is not running; see ``detail``)."""
        result: pb.CancelOperationResponse = self._unary(
            self._stub.CancelOperation, pb.CancelOperationRequest(operation_id=operation_id)
        )
        return result

    def operations(self) -> pb.ListOperationsResponse:
        """The operations running now, with their latest progress."""
        result: pb.ListOperationsResponse = self._unary(self._stub.ListOperations, pb.ListOperationsRequest())
        return result

    def export_snapshot(self, snapshot: str, sink: BinaryIO) -> int:
        """Write ``snapshot`` as one export stream (manifest + its chunks, as stored) to ``sink``;
        returns the bytes written. ``import_snapshot`` on any daemon takes it back in."""
        written = 0
        try:
            for piece in self._stub.ExportSnapshot(pb.ExportSnapshotRequest(snapshot=snapshot), timeout=self.timeout):
                sink.write(piece.data)
                written += len(piece.data)
        except grpc.RpcError as err:
            raise SnapdClientError.from_rpc(err, self.target) from None
        return written

    def import_snapshot(self, source: BinaryIO | Iterable[bytes]) -> pb.Snapshot:
        """Send an export stream (a binary file, or an iterable of bytes) to the daemon; returns
        the snapshot, which is visible only once the whole stream was verified and stored."""
        pieces: Iterable[bytes] = (iter(lambda: source.read(STREAM_PIECE), b"")  # type: ignore[union-attr]
                                   if hasattr(source, "read") else source)
        requests = (pb.StreamData(data=p) for p in pieces)
        result: pb.Snapshot = self._unary(self._stub.ImportSnapshot, requests)
        return result

    def list(self, name: str = "", remote: bool = False) -> pb.ListSnapshotsResponse:
        """Complete snapshots, oldest first (only those named ``name`` if given), with size sums:
        the local store's, or with ``remote`` the remote tier's."""
        result: pb.ListSnapshotsResponse = self._unary(self._stub.ListSnapshots,
                                                       pb.ListSnapshotsRequest(name=name, remote=remote))
        return result

    def get(self, snapshot: str) -> pb.Snapshot:
        """Everything recorded about ``snapshot`` (id, unique id prefix, or name)."""
        result: pb.Snapshot = self._unary(self._stub.GetSnapshot, pb.GetSnapshotRequest(snapshot=snapshot))
        return result

    def delete(self, snapshot: str) -> pb.DeleteSnapshotResponse:
        """Delete ``snapshot`` and the chunks only it used (refused for a pinned one)."""
        result: pb.DeleteSnapshotResponse = self._unary(
            self._stub.DeleteSnapshot, pb.DeleteSnapshotRequest(snapshot=snapshot)
        )
        return result

    def pin(self, snapshot: str, pinned: bool = True) -> pb.Snapshot:
        """Pin (gc and delete leave it alone) or, with ``pinned=False``, unpin ``snapshot``."""
        result: pb.Snapshot = self._unary(self._stub.PinSnapshot, pb.PinSnapshotRequest(snapshot=snapshot, pinned=pinned))
        return result

    def prefetch(self, snapshot: str, drop: bool = False) -> pb.PrefetchResponse:
        """Keep ``snapshot``'s chunks decompressed in RAM for fast restores (``drop``: free them)."""
        result: pb.PrefetchResponse = self._unary(self._stub.Prefetch, pb.PrefetchRequest(snapshot=snapshot, drop=drop))
        return result

    def gc(self, *, keep_last: int = 0, dry_run: bool = False, remote: bool = False) -> pb.CollectGarbageResponse:
        """Expire all but the newest ``keep_last`` snapshots of each name (0: expire none; pinned
        and unnamed ones are kept), then remove unreferenced chunks; ``dry_run`` only plans.
        ``remote``: the remote tier's unreferenced chunks instead (keep_last does not apply)."""
        result: pb.CollectGarbageResponse = self._unary(
            self._stub.CollectGarbage, pb.CollectGarbageRequest(keep_last=keep_last, dry_run=dry_run, remote=remote)
        )
        return result

    def push(self, snapshot: str, *, on_progress: ProgressCallback | None = None,
             on_interrupt: InterruptCallback | None = None) -> pb.PushResult:
        """Upload a local snapshot to the remote tier (chunks the bucket lacks, then its manifest)."""
        result: pb.PushResult = self._follow(self._stub.PushSnapshot(pb.PushRequest(snapshot=snapshot),
                                                                     timeout=self.timeout),
                                             "result", on_progress, on_interrupt)
        return result

    def pull(self, snapshot: str, *, on_progress: ProgressCallback | None = None,
             on_interrupt: InterruptCallback | None = None) -> pb.PullResult:
        """Download a remote snapshot into the local store (chunks it lacks, verified)."""
        result: pb.PullResult = self._follow(self._stub.PullSnapshot(pb.PullRequest(snapshot=snapshot),
                                                                     timeout=self.timeout),
                                             "result", on_progress, on_interrupt)
        return result

    def fsck(self, snapshot: str = "") -> pb.CheckStoreResponse:
        """Read and verify every chunk of ``snapshot`` (default: every snapshot); bad chunks go to
        quarantine and are listed in ``damage``."""
        result: pb.CheckStoreResponse = self._unary(self._stub.CheckStore, pb.CheckStoreRequest(snapshot=snapshot))
        return result

    def status(self) -> pb.DaemonStatus:
        """The daemon's version, state and host checks (CRIU, kernel, cgroups, disk, GPU, store)."""
        result: pb.DaemonStatus = self._unary(self._stub.GetStatus, pb.GetStatusRequest())
        return result
