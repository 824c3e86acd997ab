"""Publish a TCP port of a process's network namespace on a host address: a relay process.

``python -m snapd_daemon.host.portfwd --pid PID --listen HOST:PORT --port N --ready-fd FD``
binds HOST:PORT in the namespace it starts in (the host's), then enters the
network namespace of PID and relays every connection accepted there to
127.0.0.1:N inside it. It writes the address it listens on ("HOST:PORT", the
port the kernel chose when 0 was asked) and a newline to FD once it
accepts connections, or "error: ..." if it cannot, and ends by itself when
PID exits (a pidfd says so): it never outlives the tree it serves.

A userspace relay rather than a veth pair and NAT: it needs no firewall
tools, no addresses to allocate, and each restored copy of a namespace (whose
addresses are all the same, restored from one image) is told apart by its
host port alone. ``publish`` starts one and returns its address.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from snapd_daemon.host.namespaces import CLONE_NEWNET, setns

_RELAY_CHUNK = 256 << 10
_START_SECONDS = 15.0


@dataclass(frozen=True)
class Published:
    port: int  # inside the namespace
    address: str  # host:port on the host
    relay_pid: int

    def end(self) -> None:
        """Stop the relay (one already gone: nothing to do)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.relay_pid, signal.SIGTERM)


class PublishError(Exception):
    """The relay could not start; the message says why."""


def split_address(text: str) -> tuple[str, int]:
    """"HOST:PORT" or "[V6]:PORT" -> (host, port); ValueError when malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def publish(pid: int, listen: str, port: int) -> Published:
    """Start a relay publishing ``port`` of ``pid``'s network namespace on ``listen``
    (HOST:PORT, port 0: any free one); raises PublishError."""
    read_end, write_end = os.pipe()
    try:
        relay = subprocess.Popen(
            [sys.executable, "-m", "snapd_daemon.host.portfwd", "--pid", str(pid), "--listen", listen,
             "--port", str(port), "--ready-fd", str(write_end)],
            pass_fds=(write_end,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as ready:
        line = _read_line(ready.fileno(), _START_SECONDS).decode(errors="replace").strip()
    if not line or line.startswith("error:"):
        relay.kill()
        relay.wait()
        raise PublishError(line.removeprefix("error:").strip() or "the relay exited without a word")
    threading.Thread(target=relay.wait, name=f"relay-{relay.pid}", daemon=True).start()  # reaped when it ends
    return Published(port=port, address=line, relay_pid=relay.pid)


def _read_line(fd: int, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    data = b""
    os.set_blocking(fd, False)
    while not data.endswith(b"\n") and time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 256)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        if not chunk:
            break
        data += chunk
    return data


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_RELAY_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


async def _serve(listener: socket.socket, port: int, pidfd: int) -> None:
    async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            inner_r, inner_w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            client_w.close()
            return
        try:
            await asyncio.gather(_pipe(client_r, inner_w), _pipe(inner_r, client_w))
        finally:
            inner_w.close()
            client_w.close()

    gone = asyncio.Event()
    asyncio.get_running_loop().add_reader(pidfd, gone.set)
    server = await asyncio.start_server(relay, sock=listener)
    async with server:
        await gone.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="portfwd")
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ready-fd", type=int, required=True)
    args = parser.parse_args(argv)
    with os.fdopen(args.ready_fd, "w") as ready:
        try:
            host, host_port = split_address(args.listen)
            pidfd = os.pidfd_open(args.pid)
            netns = os.open(f"/proc/{args.pid}/ns/net", os.O_RDONLY)
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            listener = socket.socket(family, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, host_port))
            listener.listen(128)
            setns(netns, CLONE_NEWNET)  # sockets made from here on live in the tree's namespace
            os.close(netns)
        except (OSError, ValueError) as exc:
            ready.write(f"error: {exc}\n")
            return 1
        bound = listener.getsockname()
        ready.write(f"{'[' + bound[0] + ']' if family == socket.AF_INET6 else bound[0]}:{bound[1]}\n")
    asyncio.run(_serve(listener, args.port, pidfd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
