"""Server interceptors every mlmesh service runs (see `mlmesh.server.run_service`).

`WrappingInterceptor` is the base: it wraps each method's handler once.
`UndecodableInterceptor` answers requests whose bytes do not parse as the
method's message with INVALID_ARGUMENT naming them. grpc.aio runs a method's
request deserializer before any servicer code; when it raises (protobuf's
DecodeError) the call ends UNKNOWN with a Python exception name, and the client
cannot tell its own bad bytes from a server bug. Each deserializer here hands
back an `Undecodable` marker instead of raising, and the call is answered with
the method, the message type and the parser's reason before the servicer sees
anything. In a client stream the marker aborts the call at the message that does
not parse (the ones before it were handed to the servicer, which treats an
aborted stream as a broken one). Methods that take raw bytes (`mlmesh.wire`
framing) have no deserializer and parse, and refuse, on their own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc


class WrappingInterceptor(grpc.aio.ServerInterceptor):
    """An interceptor that wraps a method's handler once, not on every call.

    gRPC asks every interceptor for the handler on each call; a registered method's
    handler is the same object each time, so the wrapped one is kept per method (and
    replaced if the inner handler changes). Interceptors built on this chain cheaply:
    each returns the same wrapped object, so the next one's cache hits too."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        hit = self._wrapped.get(method)
        if hit is not None and hit[0] is handler:
            return hit[1]
        wrapped = self.wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The handler to use for `method` ("/pkg.Service/Method") instead of `handler`."""
        raise NotImplementedError


@dataclass(frozen=True)
class Undecodable:
    """Stands in for a request message whose bytes did not parse."""

    reason: str


def _message_name(deserializer: Callable[[bytes], Any]) -> str:
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", "") or "the request message"


class UndecodableInterceptor(WrappingInterceptor):
    """Answers INVALID_ARGUMENT for request bytes that do not parse (see the module doc)."""

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        deserialize = handler.request_deserializer
        if deserialize is None:
            return handler  # raw bytes: the servicer parses them itself
        message = _message_name(deserialize)

        def tolerant(data: bytes) -> Any:
            try:
                return deserialize(data)
            except Exception as e:  # DecodeError, or whatever a custom deserializer raises
                return Undecodable(f"{type(e).__name__}: {e}")

        def refusal(bad: Undecodable, index: int | None = None) -> str:
            which = "request" if index is None else f"request message {index}"
            return f"{method}: the {which} does not parse as {message} ({bad.reason})"

        def unary_request(fn: Callable[..., Any]) -> Callable[..., Any]:
            async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if isinstance(request, Undecodable):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, refusal(request))
                return await fn(request, context)

            return checked

        def unary_request_stream(fn: Callable[..., Any]) -> Callable[..., Any]:
            async def checked(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                if isinstance(request, Undecodable):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, refusal(request))
                async for item in fn(request, context):
                    yield item

            return checked

        def checked_requests(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            async def gen() -> AsyncIterator[Any]:
                index = 0
                async for request in requests:
                    if isinstance(request, Undecodable):
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, refusal(request, index))
                    yield request
                    index += 1

            return gen()

        def stream_request(fn: Callable[..., Any]) -> Callable[..., Any]:
            async def checked(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                return await fn(checked_requests(requests, context), context)

            return checked

        def stream_request_stream(fn: Callable[..., Any]) -> Callable[..., Any]:
            async def checked(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                async for item in fn(checked_requests(requests, context), context):
                    yield item

            return checked

        if handler.unary_unary:
            return handler._replace(
                request_deserializer=tolerant, unary_unary=unary_request(handler.unary_unary)
            )
        if handler.unary_stream:
            return handler._replace(
                request_deserializer=tolerant, unary_stream=unary_request_stream(handler.unary_stream)
            )
        if handler.stream_unary:
            return handler._replace(
                request_deserializer=tolerant, stream_unary=stream_request(handler.stream_unary)
            )
        if handler.stream_stream:
            return handler._replace(
                request_deserializer=tolerant, stream_stream=stream_request_stream(handler.stream_stream)
            )
        return handler
