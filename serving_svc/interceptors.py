"""Server interceptors of the serving replica: de-duplication and deadlines.

De-duplication is keyed on full method names, so it covers mlmesh's own `ServingService/Predict`
and TensorFlow Serving's `PredictionService/Predict|Classify|Regress` without
touching their servicers. A request carrying `idempotency-key` metadata (JSON
clients send the HTTP header; Envoy's transcoder forwards it as metadata) is
run through `core.dedup.Deduplicator`; with `content_hash`, a request without
a key is keyed by a digest of its content. Answers are kept serialized: a
replay sends the stored bytes as they are.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Iterable
from typing import Any

import grpc
from mlmesh.server import WrappingInterceptor

from serving_svc.core import metrics
from serving_svc.core.batcher import REQUEST_DEADLINE
from serving_svc.core.dedup import Deduplicator, KeyMismatch, Outcome, Restart

METADATA_KEY = "idempotency-key"
MAX_KEY_LENGTH = 256

DEFAULT_METHODS = (
    "/mlmesh.serving.v1.ServingService/Predict",
    # TF Serving's REST API, transcoded by the gateway into these.
    "/mlmesh.serving.v1.ServingService/RestPredict",
    "/mlmesh.serving.v1.ServingService/RestClassify",
    "/mlmesh.serving.v1.ServingService/RestRegress",
    "/tensorflow.serving.PredictionService/Predict",
    "/tensorflow.serving.PredictionService/Classify",
    "/tensorflow.serving.PredictionService/Regress",
)

# The requester's own time ran out or it went away: not an answer to share with others.
_RESTART_CODES = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


class _CallFailed(Exception):
    """An execution ended in a status; coalesced waiters answer with the same one."""

    def __init__(self, code: grpc.StatusCode, details: str, origin: object) -> None:
        super().__init__(details)
        self.code, self.details, self.origin = code, details, origin


def request_digest(method: str, request: Any) -> bytes:
    """Method + deterministic serialization (map entries sorted), so equal requests
    from different clients (or through the JSON transcoder) agree."""
    h = hashlib.sha256(method.encode())
    h.update(b"\0")
    h.update(request.SerializeToString(deterministic=True))
    return h.digest()


def idempotency_key(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == METADATA_KEY:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return None


class DedupInterceptor(WrappingInterceptor):
    """Wraps unary handlers of `methods`; every other method passes through untouched."""

    def __init__(
        self, dedup: Deduplicator, *, content_hash: bool = False, methods: Iterable[str] = DEFAULT_METHODS
    ) -> None:
        super().__init__()
        self.dedup = dedup
        self.content_hash = content_hash
        self.methods = frozenset(methods)

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if method not in self.methods or handler.unary_unary is None:
            return handler
        serialize = handler.response_serializer or (lambda m: m)
        wrapped = self._wrap(method, handler.unary_unary, serialize)
        # The wrapper returns serialized bytes (a replay needs no re-serialization).
        return handler._replace(unary_unary=wrapped, response_serializer=None)

    def _wrap(
        self, method: str, behavior: Callable[..., Any], serialize: Callable[[Any], bytes]
    ) -> Callable[..., Any]:
        short = method.rsplit("/", 1)[-1]
        service = method.strip("/").split("/")[0].rsplit(".", 1)[-1]
        label = f"{service}.{short}"

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> bytes:
            key = idempotency_key(context)
            if key is not None and not 0 < len(key) <= MAX_KEY_LENGTH:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{METADATA_KEY} has {len(key)} characters; expected 1..{MAX_KEY_LENGTH}",
                )
            if key is None and not self.content_hash:
                return serialize(await behavior(request, context))  # no digest: keyless costs nothing
            digest = request_digest(method, request)
            if key is None:
                key = "sha256:" + digest.hex()

            async def execute() -> bytes:
                try:
                    response = await behavior(request, context)
                except asyncio.CancelledError:
                    raise
                except BaseException as e:
                    code = context.code()
                    if not isinstance(code, grpc.StatusCode):
                        code = grpc.StatusCode.UNKNOWN
                    if code in _RESTART_CODES:
                        raise Restart() from e
                    raise _CallFailed(code, context.details() or str(e), context) from e
                return serialize(response)

            try:
                answer, outcome = await self.dedup.run(key, digest, execute)
            except KeyMismatch as e:
                metrics.DEDUP_HITS.labels(label, "mismatch").inc()
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, e.message)
                raise  # unreachable: abort raises
            except _CallFailed as e:
                if e.origin is context and e.__cause__ is not None:
                    raise e.__cause__ from None  # this call's own failure, status already set
                metrics.DEDUP_HITS.labels(label, "coalesced").inc()  # joined an execution that failed
                await context.abort(e.code, e.details)
                raise  # unreachable: abort raises
            finally:
                metrics.DEDUP_CACHE_BYTES.set(self.dedup.cached_bytes)
                metrics.DEDUP_CACHE_ENTRIES.set(self.dedup.cached_entries)
            if outcome is not Outcome.EXECUTED:
                metrics.DEDUP_HITS.labels(label, outcome.value).inc()
            return answer

        return unary


class DeadlineInterceptor(WrappingInterceptor):
    """Hands each unary call's gRPC deadline to core as an absolute time.monotonic()
    (`batcher.REQUEST_DEADLINE`), so a request whose deadline passes while queued is
    answered DEADLINE_EXCEEDED without running, whichever servicer queued it."""

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler.unary_unary is None:
            return handler
        behavior = handler.unary_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            remaining = context.time_remaining()
            if remaining is not None:
                # The handler runs in this task, so the variable is visible down to the batcher.
                REQUEST_DEADLINE.set(time.monotonic() + remaining)
            return await behavior(request, context)

        return handler._replace(unary_unary=unary)
