"""The asyncio client (grpc.aio): the same methods as SnapdClient (calls.py), each a coroutine.

    async with AsyncSnapdClient() as client:
        snap = await client.checkpoint(pid, name="llama-8b")
        one, two = await asyncio.gather(client.restore("llama-8b"), client.restore("llama-8b"))
        replicas = await client.restore_replicas("llama-8b", 2)

Failures raise the same exceptions (snapd_client.errors), deadlines are the same.
Cancelling the task that awaits a checkpoint or restore cancels the call, and
with it the operation unless it is past its commit point. ``on_interrupt`` is
the sync client's (KeyboardInterrupt); here it is not used. ``import_snapshot``
reads a file source on the event loop's thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, BinaryIO

import grpc
import grpc.aio

from snapd.v1 import snapd_pb2 as pb
from snapd.v1 import snapd_pb2_grpc
from snapd_client.calls import DEFAULT, Calls, InterruptCallback, ProgressCallback, Timeout, stream_event
from snapd_client.client import TlsFiles, default_target, no_result, normalize_target, open_channel
from snapd_client.errors import SnapdClientError, from_rpc


class AsyncSnapdClient(Calls):
    """One grpc.aio connection to a snapd daemon; ``async with`` it (or ``await close()``).
    The arguments are SnapdClient's."""

    def __init__(self, target: str | None = None, timeout: Timeout = DEFAULT, tls: TlsFiles | None = None) -> None:
        self.target = normalize_target(target or default_target())
        self.timeout = timeout
        self._channel = open_channel(grpc.aio, self.target, tls)
        self._stub = snapd_pb2_grpc.SnapshotsStub(self._channel)

    async def close(self) -> None:
        """Close the connection."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncSnapdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _unary(self, method: str, request: Any, deadline: float | None) -> Any:
        try:
            return await getattr(self._stub, method)(request, timeout=deadline)
        except grpc.RpcError as err:
            raise from_rpc(err, self.target, method, deadline) from None

    async def _follow(self, method: str, request: Any, final_field: str, deadline: float | None,
                      on_progress: ProgressCallback | None, on_interrupt: InterruptCallback | None) -> Any:
        call = getattr(self._stub, method)(request, timeout=deadline)
        try:
            async for event in call:
                done, value = stream_event(event, final_field, on_progress)
                if done:
                    return value
        except grpc.RpcError as err:
            raise from_rpc(err, self.target, method, deadline) from None
        except asyncio.CancelledError:
            call.cancel()  # the daemon rolls the operation back unless it is past its commit point
            raise
        raise no_result()

    async def _stream(self, method: str, request: Any, deadline: float | None) -> AsyncIterator[Any]:
        call = getattr(self._stub, method)(request, timeout=deadline)
        try:
            async for message in call:
                yield message
        except grpc.RpcError as err:
            raise from_rpc(err, self.target, method, deadline) from None
        finally:
            call.cancel()  # the caller stopped iterating: end the stream on the daemon too

    async def _export(self, request: pb.ExportSnapshotRequest, sink: BinaryIO, deadline: float | None) -> int:
        written = 0
        async for piece in self._stream("ExportSnapshot", request, deadline):
            sink.write(piece.data)
            written += len(piece.data)
        return written

    async def _gather(self, thunks: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
        """The thunks' coroutines at once: each one's result or its SnapdClientError, in order."""

        async def one(thunk: Callable[[], Awaitable[Any]]) -> Any:
            try:
                return await thunk()
            except SnapdClientError as err:
                return err

        return list(await asyncio.gather(*(one(t) for t in thunks)))
