"""Who may talk to the daemon, and the check on every call.

Unix socket. The public socket is root:<socket group> 0660 (first layer). The
daemon accepts its connections itself (``gate.py``) and reads each peer's
credentials from the kernel: SO_PEERCRED (uid, gid, pid) and SO_PEERGROUPS
(supplementary groups), both as of connect(). Root, the allowed uids and
members of the allowed gids pass (second layer). gRPC's Python server cannot
hand a connection's fd or credentials to a handler (its "local" credentials do
not look at them either), so the gate relays each connection to the gRPC
server's private socket, inside the 0700 state directory where only root can
connect, from a socket bound to an abstract address that carries the verdict
(``PeerTags``). gRPC reports that address as the call's peer, and
``AccessInterceptor`` ends every call whose peer is not an allowed gate
connection with PERMISSION_DENIED. A per-daemon random token in the address
means a connection made to the private socket by anything but this daemon's
gate is refused too.

TCP. Calls over TCP pass: the port either requires mutual TLS (gRPC refuses a
client without a certificate from the configured CA during the handshake, so
no call arrives) or is plain loopback TCP that the operator asked for by name
(``--insecure-loopback-tcp``), which any local user can reach.

Anyone allowed in is root-equivalent on the host: hooks run as root, and any
process can be checkpointed and restored.
"""

from __future__ import annotations

import errno
import grp
import itertools
import pwd
import secrets
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

from snapd_daemon.api.status import abort
from snapd_daemon.errors import ConfigInvalid, PermissionDenied

log = structlog.get_logger()
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13; Python 3.11 lacks the name
_UCRED = struct.Struct("iII")  # struct ucred: pid_t pid; uid_t uid; gid_t gid
_AUDITED = "/snapd.v1.Snapshots/"


@dataclass(frozen=True)
class PeerCred:
    """A unix socket peer as the kernel recorded it at connect()."""

    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...]

    @classmethod
    def of(cls, sock: socket.socket) -> PeerCred:
        pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        return cls(pid, uid, gid, _peer_groups(sock))

    def __str__(self) -> str:
        return f"uid {self.uid} gid {self.gid} (pid {self.pid})"


def _peer_groups(sock: socket.socket) -> tuple[int, ...]:
    size = 256 * 4
    while True:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, size)
        except OSError as exc:
            if exc.errno != errno.ERANGE or size > 256 * 4:
                raise
            size = 65536 * 4  # NGROUPS_MAX
            continue
        return struct.unpack(f"{len(raw) // 4}I", raw)


@dataclass(frozen=True)
class AccessPolicy:
    """Unix socket callers allowed besides root: by uid, or by primary or supplementary gid."""

    uids: frozenset[int] = frozenset()
    gids: frozenset[int] = frozenset()

    def permits(self, peer: PeerCred) -> bool:
        return peer.uid == 0 or peer.uid in self.uids or not self.gids.isdisjoint((peer.gid, *peer.groups))

    @classmethod
    def from_names(cls, users: tuple[str, ...], groups: tuple[str, ...]) -> AccessPolicy:
        """Entries are numeric ids or user / group names (resolved now, at daemon start)."""
        return cls(frozenset(resolve_uid(u) for u in users), frozenset(resolve_gid(g, "allow_gid") for g in groups))


def resolve_uid(user: str) -> int:
    try:
        return int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid
    except KeyError:
        raise ConfigInvalid(source="allow_uid", reason=f"no user named {user!r}") from None


def resolve_gid(group: str, source: str) -> int:
    try:
        return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigInvalid(source=source, reason=f"no group named {group!r}") from None


class PeerTags:
    """Abstract unix addresses the gate binds its relay connections to. Each names this
    daemon's random token, a connection number, the verdict and the peer's identity."""

    _PREFIX = "gpu-snapd"

    def __init__(self) -> None:
        self.token = secrets.token_hex(12)
        self._numbers = itertools.count()

    def address(self, peer: PeerCred, allowed: bool) -> str:
        verdict = "allow" if allowed else "deny"
        return f"\0{self._PREFIX}/{self.token}/{next(self._numbers)}/{verdict}/{peer.uid}/{peer.gid}/{peer.pid}"

    def verdict(self, grpc_peer: str) -> tuple[bool, str] | None:
        """(allowed, caller) for a gRPC peer string of a gate connection, else None."""
        head = f"unix-abstract:{self._PREFIX}/{self.token}/"
        if not grpc_peer.startswith(head):
            return None
        fields = grpc_peer[len(head):].split("/")
        if len(fields) != 5 or fields[1] not in ("allow", "deny"):
            return None
        _, verdict, uid, gid, pid = fields
        return verdict == "allow", f"uid {uid} gid {gid} (pid {pid})"


class AccessInterceptor(grpc.ServerInterceptor):
    """Runs the access check before every handler, and logs each snapd.v1 call with its caller."""

    def __init__(self, tags: PeerTags) -> None:
        self.tags = tags

    def _check(self, context: grpc.ServicerContext, method: str) -> None:
        peer = context.peer()
        if peer.startswith(("ipv4:", "ipv6:")):
            names = context.auth_context().get("x509_common_name")
            caller = f"tls cn={names[0].decode()} {peer}" if names else f"tcp {peer}"
        else:
            verdict = self.tags.verdict(peer)
            if verdict is None or not verdict[0]:
                who = verdict[1] if verdict else f"peer {peer!r} (not a connection through the daemon's socket)"
                log.warning("access.denied", caller=who, method=method)
                abort(context, PermissionDenied(
                    reason=f"{who} may not use this daemon; allowed are root and the configured "
                    "allow_uid / allow_gid entries"))
            caller = verdict[1]
        if method.startswith(_AUDITED):
            log.info("api.call", method=method.removeprefix(_AUDITED), caller=caller)

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        return _guarded(handler, lambda context: self._check(context, method))


def _guarded(handler: grpc.RpcMethodHandler, check: Callable[[grpc.ServicerContext], None]) -> grpc.RpcMethodHandler:
    """The same handler, with ``check`` run before its behaviour."""
    h: Any = handler
    codec = {"request_deserializer": h.request_deserializer, "response_serializer": h.response_serializer}
    if h.unary_unary:
        def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
            check(context)
            return h.unary_unary(request, context)
        return grpc.unary_unary_rpc_method_handler(unary_unary, **codec)
    if h.unary_stream:
        def unary_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            check(context)
            return h.unary_stream(request, context)  # type: ignore[no-any-return]
        return grpc.unary_stream_rpc_method_handler(unary_stream, **codec)
    if h.stream_unary:
        def stream_unary(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            check(context)
            return h.stream_unary(requests, context)
        return grpc.stream_unary_rpc_method_handler(stream_unary, **codec)

    def stream_stream(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        check(context)
        return h.stream_stream(requests, context)  # type: ignore[no-any-return]
    return grpc.stream_stream_rpc_method_handler(stream_stream, **codec)
