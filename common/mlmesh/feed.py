"""A consumer's side of the work queue: leased partitions, read ahead.

A strictly serial reader (lease, read, work, complete, lease again) leaves
the network idle while it works and the CPU idle while it reads. A feed holds
up to `depth` leases: the partition in the consumer's hands and the next ones,
their reads in flight while the consumer works, leases in batches (one LeaseTask for several tasks),
renews every lease it holds from one heartbeat, and completes off the
consumer's path: a completion rides on the LeaseTask that asks for the next
task (`complete_lease_ids`, the same durable commit), so a partition costs one
queue call, not two. The exactly-once rules are the queue's: a task counts when
its lease completes, a lease that lapsed cannot complete (the task went back
to the queue for someone else), so the consumer must check `item.lost` before
it commits to the work's effects and treat `LeaseLost` as "not mine".

    async with PartitionFeed(port, job, worker, load=read) as feed:
        async for item in feed:
            if item is IDLE:  # nothing pending right now; the queue is not done
                continue
            ...  # work on item.data
            await feed.complete(item)

Runs on one asyncio event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from mlmesh.errors import FailedPrecondition, MlmeshError, NotFound
from mlmesh.logging import get_logger

log = get_logger(__name__)

T = TypeVar("T")


class LeasedTask(Protocol):
    """What the feed needs of a task (the trainer's TaskInfo has it)."""

    @property
    def lease_id(self) -> str: ...

    @property
    def lease_deadline_unix(self) -> float: ...


class QueuePort(Protocol):
    async def lease_tasks(
        self, job_id: str, worker_id: str, lease_seconds: float, max_tasks: int, complete: Sequence[str] = ()
    ) -> tuple[list[Any], Any]:
        """(tasks, queue status); the status has a `done` flag. The leases in `complete` are
        completed first, in the same commit; if one cannot be, the call fails
        (FailedPrecondition, NotFound) and nothing is completed or leased."""
        ...

    async def extend_lease(self, lease_id: str, lease_seconds: float) -> float: ...

    async def complete_task(self, lease_id: str) -> Any: ...


class LeaseLost(Exception):
    """The lease lapsed: its task went back to the queue, and this attempt does not count."""


@dataclass(eq=False)
class Item(Generic[T]):
    task: Any
    data: T | None = None
    lost: bool = False  # set by the heartbeat when the lease could not be renewed
    _renew_at: float = field(default=0.0, repr=False)  # local monotonic time


class _Idle:
    def __repr__(self) -> str:
        return "IDLE"


IDLE: Any = _Idle()


class PartitionFeed(Generic[T]):
    def __init__(
        self,
        port: QueuePort,
        job_id: str,
        worker_id: str,
        *,
        load: Callable[[Any], Awaitable[T]],
        depth: int = 2,
        lease_seconds: float = 30.0,
        poll_seconds: float = 0.5,
    ) -> None:
        if depth < 1:
            raise ValueError(f"depth is {depth}; expected >= 1")
        self.port = port
        self.job_id = job_id
        self.worker_id = worker_id
        self.load = load
        self.depth = depth
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self._ahead: deque[tuple[Item[T], asyncio.Task[T]]] = deque()
        self._held: dict[str, Item[T]] = {}  # lease id -> item, until completed or dropped
        self._heartbeat: asyncio.Task[None] | None = None
        self._filling: asyncio.Task[None] | None = None  # the queue calls in flight (`_fill`)
        self._failed: BaseException | None = None  # what ended the last `_fill`, until raised
        # Completions waiting for the next LeaseTask: (lease id, its caller's future).
        self._completing: list[tuple[str, asyncio.Future[Any]]] = []
        self._freed = asyncio.Event()  # set when a held lease ends (completed or dropped)
        self._done = False
        self._closed = False  # after close(): no more leases; a completion goes alone

    async def __aenter__(self) -> PartitionFeed[T]:
        self._heartbeat = asyncio.create_task(self._renew_loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop reading ahead and renewing. Leases still held are left to lapse, so their
        tasks return to the queue for others."""
        self._closed = True
        if self._filling is not None:
            self._filling.cancel()
            with contextlib.suppress(BaseException):
                await self._filling
            self._filling = None
        for _, waiting in self._completing:
            waiting.cancel()
        self._completing.clear()
        for _, read in self._ahead:
            read.cancel()
        for _, read in self._ahead:
            with contextlib.suppress(BaseException):
                await read
        self._ahead.clear()
        self._held.clear()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None

    @property
    def held(self) -> int:
        """Leases held right now (being read, worked on, or waiting)."""
        return len(self._held)

    # ----- iteration ---------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Item[T]]:
        return self._items()

    async def _items(self) -> AsyncIterator[Item[T]]:
        while True:
            self._refill()
            if not self._ahead:
                await self._filled()  # nothing in hand: this lease is on the critical path
                if not self._ahead:
                    if self._done:
                        return
                    if self._completing:  # they came after the last call: send them now
                        continue
                    # The consumer still holds leases of ours (their completions not yet
                    # sent): one ending makes room to lease, or may end the job. Wait for
                    # that, not a whole poll period; IDLE means the queue has nothing for us.
                    if self._held and await self._slot_freed(self.poll_seconds):
                        continue
                    yield IDLE
                    if not self._held:
                        await asyncio.sleep(self.poll_seconds)
                    continue
            item, read = self._ahead.popleft()
            try:
                item.data = await read
            except BaseException:
                self._held.pop(item.task.lease_id, None)
                raise
            self._refill()  # lease the next while the consumer works on this one
            yield item

    async def _slot_freed(self, timeout: float) -> bool:
        """Whether a held lease ended (completed or dropped) within `timeout` seconds."""
        self._freed.clear()
        try:
            await asyncio.wait_for(self._freed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _refill(self) -> None:
        """Start the queue calls in the background unless they are running; a failed one
        raises here, so no error is lost."""
        self._raise_failure()
        if self.depth - len(self._held) > 0 or self._completing:
            self._start_fill()

    def _start_fill(self) -> None:
        if self._filling is None or self._filling.done():
            self._filling = asyncio.create_task(self._fill())

    def _raise_failure(self) -> None:
        if self._failed is not None:
            failed, self._failed = self._failed, None
            raise failed

    async def _filled(self) -> None:
        if self._filling is not None:
            await self._filling  # it keeps its errors (`_failed`), so this does not raise them
        self._raise_failure()

    async def _fill(self) -> None:
        """Lease what the depth allows, completing what is waiting in the same call; again
        while completions arrived meanwhile. Errors are kept for `_refill` to raise (and
        given to the completions they concern)."""
        try:
            while True:
                completing, self._completing = self._completing, []
                want = 0 if self._closed else self.depth - len(self._held)  # in hand counts
                if want <= 0:
                    if not completing:
                        return
                    await self._complete_each(completing)  # nothing to lease: complete alone
                    continue
                ids = [lease_id for lease_id, _ in completing]
                try:
                    tasks, status = await self.port.lease_tasks(
                        self.job_id, self.worker_id, self.lease_seconds, want, ids
                    )
                except (FailedPrecondition, NotFound):
                    if not completing:
                        raise
                    # One of them lapsed (nothing was completed or leased): find out which.
                    await self._complete_each(completing)
                    continue
                except BaseException as e:
                    _settle(completing, e)
                    raise
                for _, waiting in completing:
                    if not waiting.done():
                        waiting.set_result(status)
                self._done = not tasks and bool(status.done)
                for task in tasks:
                    item: Item[T] = Item(task, _renew_at=self._renew_time(task.lease_deadline_unix))
                    self._held[task.lease_id] = item
                    self._ahead.append((item, asyncio.create_task(self.load(task))))
                if not self._completing:
                    return
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._failed = e

    async def _complete_each(self, completing: list[tuple[str, asyncio.Future[Any]]]) -> None:
        """CompleteTask for each, so each caller learns its own lease's fate."""
        for i, (lease_id, waiting) in enumerate(completing):
            try:
                status = await self.port.complete_task(lease_id)
            except (FailedPrecondition, NotFound) as e:
                _settle([(lease_id, waiting)], e)
            except BaseException as e:
                _settle(completing[i:], e)
                raise
            else:
                if not waiting.done():
                    waiting.set_result(status)

    # ----- ending a task ----------------------------------------------------------------------

    async def complete(self, item: Item[T]) -> Any:
        """Complete the task; returns the queue status. LeaseLost if the lease lapsed (another
        worker will do or did the task, and this attempt does not count)."""
        self._release(item)
        if item.lost:
            raise LeaseLost(f"lease {item.task.lease_id} lapsed before the task completed")
        try:
            if self._closed:  # nothing more to lease: complete alone
                return await self.port.complete_task(item.task.lease_id)
            waiting: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._completing.append((item.task.lease_id, waiting))
            self._start_fill()  # a LeaseTask in flight takes it along when it returns
            return await waiting
        except (FailedPrecondition, NotFound) as e:
            item.lost = True
            raise LeaseLost(e.message) from e

    def drop(self, item: Item[T]) -> None:
        """Stop renewing the item's lease (the consumer gave up on it); it lapses."""
        self._release(item)

    def _release(self, item: Item[T]) -> None:
        if self._held.pop(item.task.lease_id, None) is not None:
            self._freed.set()

    # ----- leases -----------------------------------------------------------------------------

    def _renew_time(self, deadline_unix: float) -> float:
        """Half-way to the deadline, measured from now in local monotonic time, so clock
        skew between hosts does not matter."""
        return time.monotonic() + max(0.0, deadline_unix - time.time()) / 2

    async def _renew_loop(self) -> None:
        period = max(0.05, min(1.0, self.lease_seconds / 8))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for item in [i for i in self._held.values() if not i.lost and i._renew_at <= now]:
                try:
                    deadline = await self.port.extend_lease(item.task.lease_id, self.lease_seconds)
                    item._renew_at = self._renew_time(deadline)
                except (FailedPrecondition, NotFound) as e:
                    item.lost = True
                    log.warning("lease lost", lease_id=item.task.lease_id, error=e.message)
                except MlmeshError as e:  # unreachable for now: try again next round
                    log.warning(
                        "lease renewal failed; retrying", lease_id=item.task.lease_id, error=e.message
                    )


def _settle(completing: Sequence[tuple[str, asyncio.Future[Any]]], error: BaseException) -> None:
    """Tell the callers waiting on these completions that they failed with `error`."""
    for _, waiting in completing:
        if waiting.done():
            continue
        if isinstance(error, Exception):
            waiting.set_exception(error)
        else:
            waiting.cancel()
