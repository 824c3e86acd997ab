"""A typed client for schedulers and the CLI.

    client = SnapdClient()                      # unix:///run/gpu-snapd/snapd.sock
    snap = client.checkpoint(pid, name="llama-8b")
    result = client.restore("llama-8b", cgroup=CgroupSpec(path="inference/llama-8b", create=True))
    print(result.root_pid, result.cgroup)

    remote = SnapdClient("gpu-host-7:7443", tls=TlsFiles(ca=..., cert=..., key=...))
    local = SnapdClient("/run/gpu-snapd/snapd.sock")   # a plain socket path works too

Every failure is raised as a SnapdClientError: the class of the daemon's error
(``snapd_client.errors.SnapshotNotFound``, ...), carrying the gRPC status, the
error class's name, the CLI exit code and the error's fields. Every call has a
deadline (its ``timeout`` argument, else a default per kind of call: calls.py).
The methods are those of calls.py; aio.py has the same surface for asyncio.

Checkpoint and restore name their operation in every progress event
(``Progress.operation_id``); ``cancel`` asks the daemon to roll it back, which
it does only before the operation's commit point. Cancelling the call itself
(its deadline passing, the client going away) has the same effect.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO

import grpc

from snapd.v1 import snapd_pb2 as pb
from snapd.v1 import snapd_pb2_grpc
from snapd_client.calls import DEFAULT, Calls, InterruptCallback, ProgressCallback, Timeout, stream_event
from snapd_client.errors import EXIT_UNREACHABLE, SnapdClientError, from_rpc

DEFAULT_TARGET = "unix:///run/gpu-snapd/snapd.sock"
CgroupSpec = pb.CgroupSpec
# Progress.phase values (Phase.Name(p.phase) == "PHASE_DUMP"); phase_name() gives "dump".
Phase = pb.Phase
# Instance.state values; state_name() gives "running", "exited", ...
InstanceState = pb.InstanceState
TcpRestore = pb.TcpRestore
__all__ = ["DEFAULT_TARGET", "EXIT_UNREACHABLE", "CgroupSpec", "InstanceState", "Phase", "SnapdClient",
           "SnapdClientError", "TcpRestore", "TlsFiles", "default_target", "normalize_target", "open_channel",
           "phase_name", "state_name"]


def phase_name(phase: int) -> str:
    """The short name of a Progress.phase value: "dump", "commit", "inject", ... ("unknown-N"
    for a value this client does not know, from a newer daemon)."""
    try:
        return str(Phase.Name(phase)).removeprefix("PHASE_").lower().replace("_", "-")
    except ValueError:
        return f"unknown-{phase}"


def state_name(state: int) -> str:
    """The short name of an Instance.state value: "running", "exited", ... ("unknown-N" for a
    value this client does not know)."""
    try:
        return str(InstanceState.Name(state)).removeprefix("INSTANCE_STATE_").lower()
    except ValueError:
        return f"unknown-{state}"


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


def open_channel(module: ModuleType, target: str, tls: TlsFiles | None) -> Any:
    """A channel of ``module`` (grpc, or grpc.aio) to ``target``: mutual TLS with ``tls``, else plain."""
    if tls is None:
        return module.insecure_channel(target)
    return module.secure_channel(target, tls.credentials())


def no_result() -> SnapdClientError:
    return SnapdClientError(grpc.StatusCode.INTERNAL, "stream ended without a result", "", 1)


class SnapdClient(Calls):
    """One connection to a snapd daemon; use it as a context manager (or call ``close``).
    Each method (calls.py) is one API call; every failure raises a SnapdClientError."""

    def __init__(self, target: str | None = None, timeout: Timeout = DEFAULT, tls: TlsFiles | None = None) -> None:
        """``target``: a socket path, a gRPC target such as unix:///run/gpu-snapd/snapd.sock, or
        gpu-host-7:7443 (TCP with ``tls``; plain TCP only reaches a daemon serving
        --insecure-loopback-tcp); default $SNAPD_TARGET, else the system socket. ``timeout``:
        seconds every call may take unless it says (None: no limit; left out: each kind of
        call's default, calls.py); a call past it is cancelled, and so is its operation
        unless past its commit point."""
        self.target = normalize_target(target or default_target())
        self.timeout = timeout
        self._channel = open_channel(grpc, self.target, tls)
        self._stub = snapd_pb2_grpc.SnapshotsStub(self._channel)

    def close(self) -> None:
        """Close the connection."""
        self._channel.close()

    def __enter__(self) -> SnapdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unary(self, method: str, request: Any, deadline: float | None) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=deadline)
        except grpc.RpcError as err:
            raise from_rpc(err, self.target, method, deadline) from None

    def _follow(self, method: str, request: Any, final_field: str, deadline: float | None,
                on_progress: ProgressCallback | None, on_interrupt: InterruptCallback | None = None) -> Any:
        """The stream's result. The stream is read on a helper thread, so that a KeyboardInterrupt
        never lands inside gRPC. With ``on_interrupt``, a KeyboardInterrupt calls it with the
        operation id (as soon as the first progress event names it) and the stream is followed
        on to its end; a second one before the id is known, or any without ``on_interrupt``,
        cancels the call and propagates."""
        events = getattr(self._stub, method)(request, timeout=deadline)
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
                    raise from_rpc(event, self.target, method, deadline)
                if event is None:
                    raise no_result()
                done, value = stream_event(event, final_field, on_progress)
                if done:
                    return value
                operation_id = value or operation_id
            except KeyboardInterrupt:
                if on_interrupt is None or (pending and not operation_id):
                    events.cancel()
                    raise
                pending = True

    def _stream(self, method: str, request: Any, deadline: float | None) -> Iterator[Any]:
        call = getattr(self._stub, method)(request, timeout=deadline)
        try:
            yield from call
        except grpc.RpcError as err:
            raise from_rpc(err, self.target, method, deadline) from None
        finally:
            call.cancel()  # the caller stopped iterating: end the stream on the daemon too

    def _export(self, request: pb.ExportSnapshotRequest, sink: BinaryIO, deadline: float | None) -> int:
        written = 0
        for piece in self._stream("ExportSnapshot", request, deadline):
            sink.write(piece.data)
            written += len(piece.data)
        return written

    def _gather(self, thunks: list[Callable[[], Any]]) -> list[Any]:
        """Each thunk on a thread of its own, at once: its result or its SnapdClientError, in order."""
        outcomes: list[Any] = [None] * len(thunks)

        def one(i: int) -> None:
            try:
                outcomes[i] = thunks[i]()
            except SnapdClientError as err:
                outcomes[i] = err

        threads = [threading.Thread(target=one, args=(i,), name=f"call-{i}", daemon=True) for i in range(len(thunks))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return outcomes
