"""Domain errors and their one mapping to gRPC status codes.

Core code raises these; servicers let `grpc_errors` turn them into a status
with the same message. This module does not import grpc, so `core/` packages
stay free of it: the code is a status name, resolved only at the edge.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar


class MlmeshError(Exception):
    """Base of errors that carry a gRPC status code."""

    status: str = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def code(self) -> Any:
        """The grpc.StatusCode (imported here, at the edge, not at module import)."""
        import grpc

        return grpc.StatusCode[self.status]


class InvalidArgument(MlmeshError):
    status = "INVALID_ARGUMENT"


class NotFound(MlmeshError):
    status = "NOT_FOUND"


class AlreadyExists(MlmeshError):
    status = "ALREADY_EXISTS"


class FailedPrecondition(MlmeshError):
    status = "FAILED_PRECONDITION"


class ResourceExhausted(MlmeshError):
    status = "RESOURCE_EXHAUSTED"


class Unavailable(MlmeshError):
    status = "UNAVAILABLE"


class Aborted(MlmeshError):
    status = "ABORTED"


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
