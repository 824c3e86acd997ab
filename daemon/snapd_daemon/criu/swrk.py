"""Drive CRIU through its RPC protocol over a `criu swrk` child.

One `CriuCall` is one `criu swrk` process answering one request: snapd sends a
`Req` datagram on a SOCK_SEQPACKET socketpair and reads `Resp` datagrams until
the final one. With ``notify_scripts`` set, CRIU stops at each action point
(pre-dump, post-dump, pre-restore, post-restore, ...) and waits for an ack;
the caller's ``Notify`` method runs in-process at that moment (notify.py), and
raising from it makes CRIU abort the operation. CRIU 4.2.1 honours that at
every point but pre-resume, where it logs the failure and resumes anyway.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from snapd_daemon.criu import rpc_pb2
from snapd_daemon.criu.notify import Notify, dispatch

# Called with the swrk child's pid before the request is sent (e.g. to move it into a cgroup).
PlaceHook = Callable[[int], None]
_MAX_DATAGRAM = 1 << 20
_EXIT_POLL_SECONDS = 1.0  # how often a wait for CRIU's answer checks that CRIU still runs


class SwrkError(Exception):
    """CRIU answered with failure or died; ``errmsg`` is CRIU's own message."""

    def __init__(self, errmsg: str, errno_: int = 0) -> None:
        super().__init__(errmsg)
        self.errmsg = errmsg
        self.errno = errno_


class HookFailed(Exception):
    """A notify hook raised; CRIU was told to abort. ``cause`` is the hook's exception."""

    def __init__(self, script: str, cause: BaseException) -> None:
        super().__init__(f"hook {script} failed: {cause}")
        self.script = script
        self.cause = cause


def call(
    binary: str,
    request: rpc_pb2.Req,
    *,
    pass_fds: Sequence[int] = (),
    notify: Notify | None = None,
    stderr_path: Path | None = None,
    timeout: float | None = None,
    place: PlaceHook | None = None,
    plugin_dir: Path | None = None,
) -> rpc_pb2.Resp:
    """Run one request in a fresh `criu swrk` and return CRIU's final response.

    ``plugin_dir``: the only directory CRIU loads plugins (*.so) from; an empty
    one keeps the host's (/usr/lib/criu: cuda_plugin.so, amdgpu_plugin.so) out.

    Raises SwrkError when CRIU reports failure or exits without answering, and
    HookFailed (after CRIU has finished aborting) when a ``notify`` method raised.
    ``place`` gets the child's pid before CRIU sees the request; its error
    ends the call (the child exits on the closed socket). The swrk child is not tied to the caller's lifetime on purpose: if the
    daemon dies mid-dump, CRIU completes or aborts cleanly on its own and never
    leaves a half-seized process behind.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stderr = open(stderr_path, "ab") if stderr_path else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            [binary, "swrk", str(theirs.fileno())],
            pass_fds=(theirs.fileno(), *pass_fds),
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            close_fds=True,
            start_new_session=True,
            env={**os.environ, "CRIU_LIBS_DIR": str(plugin_dir)} if plugin_dir else None,
        )
    finally:
        theirs.close()
        if stderr_path:
            stderr.close()
    hook_error: HookFailed | None = None
    try:
        if place is not None:
            place(proc.pid)
        ours.settimeout(timeout)
        ours.send(request.SerializeToString())
        while True:
            data = _receive(ours, proc, timeout)
            if not data:
                try:
                    rc: int | str = proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    rc = "unknown (still running)"
                raise SwrkError(f"criu swrk closed the connection before answering; exit status {rc}")
            resp = rpc_pb2.Resp.FromString(data)
            if resp.type != rpc_pb2.NOTIFY:
                break
            ok = True
            if notify is not None and hook_error is None:
                try:
                    dispatch(notify, resp.notify.script, resp.notify.pid)
                except Exception as exc:  # the hook's failure is reported after CRIU aborts
                    hook_error = HookFailed(resp.notify.script, exc)
                    ok = False
            ours.send(rpc_pb2.Req(type=rpc_pb2.NOTIFY, notify_success=ok).SerializeToString())
    except TimeoutError as exc:
        proc.send_signal(signal.SIGTERM)
        raise SwrkError(f"criu did not answer within {timeout} s") from exc
    finally:
        ours.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if hook_error is not None:
        raise hook_error
    if not resp.success:
        errmsg = resp.cr_errmsg or f"criu reported failure (errno {resp.cr_errno})"
        raise SwrkError(errmsg, resp.cr_errno)
    return resp


def _receive(ours: socket.socket, proc: subprocess.Popen[bytes], timeout: float | None) -> bytes:
    """CRIU's next message; b"" once CRIU has exited without one (a task it forked before it was
    killed may hold the socket open for ever); TimeoutError after ``timeout`` seconds of silence."""
    ours.settimeout(_EXIT_POLL_SECONDS)
    silent = 0.0
    try:
        while True:
            try:
                return ours.recv(_MAX_DATAGRAM)
            except TimeoutError:
                if proc.poll() is not None:  # what it sent before it exited is there to read
                    ours.setblocking(False)
                    try:
                        return ours.recv(_MAX_DATAGRAM)
                    except BlockingIOError:
                        return b""
                silent += _EXIT_POLL_SECONDS
                if timeout is not None and silent >= timeout:
                    raise
    finally:
        ours.settimeout(timeout)  # the answers to CRIU's notifications are sent under it


def version(binary: str) -> str:
    """CRIU's version as 'major.minor[.sublevel]', asked over RPC."""
    resp = call(binary, rpc_pb2.Req(type=rpc_pb2.VERSION), timeout=30)
    v = resp.version
    text = f"{v.major_number}.{v.minor_number}"
    if v.HasField("sublevel"):
        text += f".{v.sublevel}"
    return text


def open_dir(path: Path) -> int:
    """An O_DIRECTORY fd for CRIU's images_dir_fd / work_dir_fd (caller closes it)."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)
