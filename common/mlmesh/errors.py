"""Domain errors and their one mapping to gRPC status codes.

Core code raises these (it never imports grpc); servicers let `grpc_errors`
turn them into a status with the same message.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc


class MlmeshError(Exception):
    """Base of errors that carry a gRPC status code."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(MlmeshError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(MlmeshError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(MlmeshError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(MlmeshError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(MlmeshError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(MlmeshError):
    code = grpc.StatusCode.UNAVAILABLE


class Aborted(MlmeshError):
    code = grpc.StatusCode.ABORTED


F = TypeVar("F", bound=Callable[..., Any])


def grpc_errors(fn: F) -> F:
    """Decorate an async servicer method (unary or streaming) so MlmeshError
    becomes `context.abort(code, message)`. Other exceptions propagate, and
    grpc answers them as UNKNOWN (and logs them)."""

    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def stream_wrapper(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
            try:
                async for item in fn(self, request, context):
                    yield item
            except MlmeshError as e:
                await context.abort(e.code, e.message)

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: Any) -> Any:
        try:
            return await fn(self, request, context)
        except MlmeshError as e:
            await context.abort(e.code, e.message)

    return wrapper  # type: ignore[return-value]


def require(condition: bool, message: str) -> None:
    """Raise InvalidArgument(message) unless condition holds."""
    if not condition:
        raise InvalidArgument(message)
