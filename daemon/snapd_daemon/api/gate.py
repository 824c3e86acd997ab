"""The daemon's public unix socket: accept, identify the peer, relay to gRPC.

The socket is bound, given to root:<group> with mode 0660, and only then
listened on, so no connection can exist before its permissions do. For each
connection the gate reads the peer's credentials from the kernel, judges them
with the access policy, and relays the bytes to the gRPC server's private
socket from a socket bound to the address that carries the verdict (see
``access``). Denied callers are relayed too: they get a PERMISSION_DENIED
status rather than a dropped connection. One asyncio loop in one thread
serves every connection.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from pathlib import Path

import structlog

from snapd_daemon.api.access import AccessPolicy, PeerCred, PeerTags

log = structlog.get_logger()
MAX_CONNECTIONS = 256
_CHUNK = 1 << 16
# At stop, how long a relayed connection may take to end by itself: gRPC has stopped by then,
# and what it wrote last (a drained operation's result) must still reach the caller.
FLUSH_SECONDS = 5.0


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Copy until EOF, then half-close ``dst``; on a broken side, close ``dst`` so the
    other direction ends too."""
    try:
        while data := await src.read(_CHUNK):
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()
    except OSError:
        dst.close()


class Gate:
    def __init__(self, path: Path, group: int, backend: Path, policy: AccessPolicy, tags: PeerTags) -> None:
        self.path = path
        self.group = group
        self.backend = backend
        self.policy = policy
        self.tags = tags
        self._loop = asyncio.new_event_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Create the socket (raises OSError when it cannot) and start serving it."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.path))
            os.chown(self.path, 0, self.group)
            os.chmod(self.path, 0o660)
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        server = self._loop.run_until_complete(asyncio.start_unix_server(self._serve, sock=sock))
        self._thread = threading.Thread(target=self._run, args=(server,), name="gate", daemon=True)
        self._thread.start()

    def _run(self, server: asyncio.Server) -> None:
        self._loop.run_forever()
        self._loop.run_until_complete(self._close(server))
        self._loop.close()

    async def _close(self, server: asyncio.Server) -> None:
        """Stop accepting, wait for the relayed connections to end, cut those left and wait for
        both (on the loop, which this thread does not own as its current loop)."""
        server.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=FLUSH_SECONDS)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(server.wait_closed(), *self._tasks, return_exceptions=True)

    def stop(self) -> None:
        """Stop accepting, let each relayed connection end (``FLUSH_SECONDS`` at most), cut the rest.
        Called after the gRPC server stopped: its connections end, and every byte it wrote before
        reaches the caller (cut at once, a drained checkpoint's result was lost: UNAVAILABLE)."""
        if self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            self._thread = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._tasks) >= MAX_CONNECTIONS:
            log.warning("gate.too_many_connections", limit=MAX_CONNECTIONS)
            writer.close()
            return
        self._tasks.add(task)
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.setblocking(False)
        try:
            peer = PeerCred.of(writer.get_extra_info("socket"))
            allowed = self.policy.permits(peer)
            log.debug("gate.connection", peer=str(peer), allowed=allowed)
            upstream.bind(self.tags.address(peer, allowed))
            await self._loop.sock_connect(upstream, str(self.backend))
            up_reader, up_writer = await asyncio.open_unix_connection(sock=upstream)
        except OSError as exc:
            log.error("gate.relay_failed", error=str(exc))
            upstream.close()
            writer.close()
            self._tasks.discard(task)
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except asyncio.CancelledError:
            # cut by ``_close`` at shutdown: end normally, or asyncio's stream callback logs
            # the cancellation as an error with a traceback
            pass
        finally:
            up_writer.close()
            writer.close()
            self._tasks.discard(task)
