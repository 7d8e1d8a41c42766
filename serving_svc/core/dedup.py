"""Request de-duplication: one execution per idempotency key, answers replayed for a while.

A request names itself with a key (the client's `idempotency-key`, or a digest
of its content when content hashing is on) and carries a digest of what it
asks (method + deterministically serialized request). For one key:

- while an execution runs, later requests with the same digest wait for it
  and get its answer (coalesced);
- after it succeeded, requests with the same digest get the stored answer
  for `ttl_s` (replayed), from a cache bounded by `max_bytes` that evicts the
  oldest answers first;
- a request with a different digest is refused (KeyMismatch: the key was
  reused for another request), whether the first is running or stored;
- failures are not stored: the requests coalesced onto a failed execution
  get its error, the next request executes again. If the execution was
  cancelled or timed out (its own client's deadline, not the request's
  fault), the waiters start over and one of them executes.

The answers are opaque bytes (serialized responses): core knows no gRPC.
Not thread-safe: every call runs on one event loop.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mlmesh.errors import FailedPrecondition

# Bytes charged per stored answer on top of the answer and key: the entry, digest, dict slot.
ENTRY_OVERHEAD = 200


class Outcome(enum.Enum):
    EXECUTED = "executed"
    COALESCED = "coalesced"
    REPLAYED = "replayed"


class KeyMismatch(FailedPrecondition):
    """The key was first used with another request."""


class Restart(Exception):
    """Raised by `execute` when its failure should not reach coalesced waiters
    (it was cancelled, or ran out of its own client's time): they start over."""


@dataclass
class _Stored:
    digest: bytes
    answer: bytes
    expires: float
    size: int


@dataclass
class _Running:
    digest: bytes
    future: asyncio.Future[bytes]


class Deduplicator:
    """In-flight coalescing plus a TTL'd, byte-bounded replay cache."""

    def __init__(self, *, ttl_s: float, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._clock = clock
        self._running: dict[str, _Running] = {}
        # Insertion order is expiry order (one TTL for all), so the oldest go first either way.
        self._stored: collections.OrderedDict[str, _Stored] = collections.OrderedDict()
        self.cached_bytes = 0

    @property
    def cached_entries(self) -> int:
        return len(self._stored)

    async def run(
        self, key: str, digest: bytes, execute: Callable[[], Awaitable[bytes]]
    ) -> tuple[bytes, Outcome]:
        """The answer for (key, digest) and how it was obtained.

        Raises KeyMismatch (FAILED_PRECONDITION) naming the key when it was
        used for another request; otherwise whatever `execute` raised, except
        Restart, which only makes waiters try again.
        """
        while True:
            self._expire()
            stored = self._stored.get(key)
            if stored is not None:
                self._check(key, stored.digest, digest, "answered")
                return stored.answer, Outcome.REPLAYED
            running = self._running.get(key)
            if running is not None:
                self._check(key, running.digest, digest, "being answered")
                try:
                    return await asyncio.shield(running.future), Outcome.COALESCED
                except Restart:
                    continue  # its owner gave up; one of the waiters executes now
            return await self._execute(key, digest, execute), Outcome.EXECUTED

    async def _execute(self, key: str, digest: bytes, execute: Callable[[], Awaitable[bytes]]) -> bytes:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_consume)  # nobody may be waiting: no "exception never retrieved"
        self._running[key] = _Running(digest, future)
        try:
            answer = await execute()
        except asyncio.CancelledError:
            future.set_exception(Restart())
            raise
        except Restart as e:
            future.set_exception(Restart())
            cause = e.__cause__
            raise (cause if cause is not None else e) from None
        except BaseException as e:
            future.set_exception(e)
            raise
        else:
            future.set_result(answer)
            self._store(key, digest, answer)
            return answer
        finally:
            del self._running[key]

    def _check(self, key: str, expected: bytes, digest: bytes, state: str) -> None:
        if digest != expected:
            raise KeyMismatch(
                f"idempotency key {key!r} was already used for a different request (it is {state}); "
                "use a new key for a new request"
            )

    def _store(self, key: str, digest: bytes, answer: bytes) -> None:
        size = len(answer) + len(key) + len(digest) + ENTRY_OVERHEAD
        if self.ttl_s <= 0 or size > self.max_bytes:
            return  # replay off, or the answer alone is larger than the whole cache
        self._drop(key)
        self._stored[key] = _Stored(digest, answer, self._clock() + self.ttl_s, size)
        self.cached_bytes += size
        while self.cached_bytes > self.max_bytes:
            self._drop(next(iter(self._stored)))

    def _expire(self) -> None:
        now = self._clock()
        while self._stored:
            key, oldest = next(iter(self._stored.items()))
            if oldest.expires > now:
                return
            self._drop(key)

    def _drop(self, key: str) -> None:
        stored = self._stored.pop(key, None)
        if stored is not None:
            self.cached_bytes -= stored.size


def _consume(future: asyncio.Future[bytes]) -> None:
    if not future.cancelled():
        future.exception()
