"""Calling mlmesh services from asyncio clients: deadlines, retries of UNAVAILABLE with
backoff, and gRPC errors turned back into `mlmesh.errors` domain errors."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from mlmesh.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    MlmeshError,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from mlmesh.logging import get_logger

log = get_logger(__name__)
T = TypeVar("T")

_ERRORS: dict[grpc.StatusCode, type[MlmeshError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
}


def domain_error(e: grpc.aio.AioRpcError, what: str) -> MlmeshError:
    cls = _ERRORS.get(e.code(), MlmeshError)
    return cls(f"{what}: {e.code().name}: {e.details()}")


@dataclass(frozen=True)
class Retry:
    """Per-call deadline, and how long UNAVAILABLE is retried (exponential backoff with jitter)."""

    timeout: float = 30.0
    stream_timeout: float = 300.0
    retry_seconds: float = 60.0
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    max_message_bytes: int = 64 * 1024 * 1024

    async def call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run `fn` (one RPC), retrying UNAVAILABLE until `retry_seconds` have passed."""
        started = time.monotonic()
        delay = self.initial_backoff
        while True:
            try:
                return await fn()
            except grpc.aio.AioRpcError as e:
                retry = e.code() == grpc.StatusCode.UNAVAILABLE
                if not retry or time.monotonic() - started + delay > self.retry_seconds:
                    raise domain_error(e, what) from None
                log.debug("retrying", what=what, code=e.code().name, delay=round(delay, 3))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.max_backoff)
