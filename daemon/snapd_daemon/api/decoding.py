"""snapd.v1 requests are decoded inside the call, so that malformed bytes get INVALID_ARGUMENT.

gRPC Python decodes a request before any handler runs and answers bytes it
cannot parse (a malformed message, a string field that is not UTF-8) with
INTERNAL. ``DecodeInterceptor`` hands every snapd.v1 handler the raw bytes
instead and parses them first thing in the call: what does not parse ends
with InvalidRequest (INVALID_ARGUMENT, with the usual trailers), and so does a
number outside its field's bound (bounds.py). It runs after the access check,
so an unknown caller learns nothing from it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from snapd_daemon.api import bounds
from snapd_daemon.api.status import abort
from snapd_daemon.errors import InvalidRequest

_SERVICE = "/snapd.v1.Snapshots/"


class DecodeInterceptor(grpc.ServerInterceptor):
    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler: Any = continuation(handler_call_details)
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        if handler is None or not method.startswith(_SERVICE) or handler.request_streaming:
            return handler  # type: ignore[no-any-return]
        parse = handler.request_deserializer
        name = method.removeprefix(_SERVICE)

        def decoded(raw: bytes, context: grpc.ServicerContext) -> Any:
            try:
                request = parse(raw)
            except DecodeError as exc:
                abort(context, InvalidRequest(field="request", reason=f"{len(raw)} bytes are not a valid "
                                              f"{name} request ({exc})"))
            try:
                bounds.check(request)
            except InvalidRequest as err:
                abort(context, err)
            return request

        if handler.unary_unary:
            behaviour = handler.unary_unary
            return handler._replace(  # type: ignore[no-any-return]
                request_deserializer=None,
                unary_unary=lambda raw, context: behaviour(decoded(raw, context), context))
        behaviour = handler.unary_stream
        return handler._replace(  # type: ignore[no-any-return]
            request_deserializer=None,
            unary_stream=lambda raw, context: behaviour(decoded(raw, context), context))
