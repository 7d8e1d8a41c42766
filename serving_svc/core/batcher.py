"""Dynamic batching: concurrent requests for one model version share one model call.

A batch closes when it holds `max_batch_size` examples or when its oldest
request has waited `max_wait_s`, whichever comes first. Inputs are
concatenated along axis 0, the model runs once in an executor thread (the
event loop keeps accepting requests meanwhile), and each request gets its
slice of every output. While a call runs, new requests queue up, so under
load batches grow by themselves; with one client they close after the wait.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
from mlmesh.errors import MlmeshError, ResourceExhausted, Unavailable
from mlmesh.logging import get_logger

from serving_svc.core import metrics

log = get_logger(__name__)

ModelCall = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


@dataclass
class _Pending:
    inputs: Mapping[str, np.ndarray]
    size: int
    # Requests can share a batch only if every non-batch dimension agrees.
    key: tuple[tuple[str, tuple[int, ...]], ...]
    future: asyncio.Future[dict[str, np.ndarray]]
    enqueued: float = field(default_factory=time.monotonic)


class Batcher:
    """The batching queue of one servable.

    Not thread-safe: `submit` and `close` must be called on the event loop
    that `start` ran on. Model calls run on `executor`; one batch per
    batcher is in flight at a time.
    """

    def __init__(
        self,
        call: ModelCall,
        *,
        model: str,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        executor: Executor,
    ) -> None:
        self._call = call
        self._model = model
        self._max_batch = max_batch_size
        self._max_wait = max_wait_s
        self._max_queue = max_queue
        self._executor = executor
        self._queue: collections.deque[_Pending] = collections.deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.batches = 0  # model calls made; read by tests and logs

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self._model}")

    async def submit(self, inputs: Mapping[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
        """Queue one validated request and wait for its slice of the outputs.

        Raises ResourceExhausted when the queue is full, Unavailable when the
        batcher is closed, MlmeshError (INTERNAL) when the model call fails.
        """
        if self._closed:
            raise Unavailable(f"model {self._model!r} is unloading; retry")
        if len(self._queue) >= self._max_queue:
            metrics.REJECTED.labels(self._model).inc()
            raise ResourceExhausted(
                f"model {self._model!r} has {len(self._queue)} requests queued, the limit (max_queue) "
                f"is {self._max_queue}; retry later"
            )
        key = tuple(sorted((name, arr.shape[1:]) for name, arr in inputs.items()))
        future: asyncio.Future[dict[str, np.ndarray]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(inputs, size, key, future))
        metrics.REQUESTS.labels(self._model).inc()
        metrics.EXAMPLES.labels(self._model).inc(size)
        metrics.QUEUE_DEPTH.labels(self._model).set(len(self._queue))
        self._wakeup.set()
        return await future

    async def close(self) -> None:
        """Stop the batching task; requests still queued get Unavailable."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._fail_all(Unavailable(f"model {self._model!r} was unloaded; retry"))

    async def _run(self) -> None:
        try:
            while True:
                if not self._queue:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                await self._wait_for_batch()
                batch = self._take_batch()
                metrics.QUEUE_DEPTH.labels(self._model).set(len(self._queue))
                if batch:
                    await self._execute(batch)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # a bug here would strand every waiter; fail them loudly instead
            log.exception("batcher crashed", model=self._model)
            self._closed = True
            self._fail_all(MlmeshError(f"model {self._model!r} batcher failed: {e}"))
            raise

    def _ready_examples(self) -> int:
        """Examples at the head of the queue that could share one batch (capped)."""
        total, key = 0, None
        for item in self._queue:
            if item.future.done():
                continue
            if key is None:
                key = item.key
            elif item.key != key:
                break
            total += item.size
            if total >= self._max_batch:
                break
        return total

    async def _wait_for_batch(self) -> None:
        deadline = self._queue[0].enqueued + self._max_wait
        while self._ready_examples() < self._max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)

    def _take_batch(self) -> list[_Pending]:
        batch: list[_Pending] = []
        total = 0
        while self._queue:
            item = self._queue[0]
            if item.future.done():  # the client gave up while waiting
                self._queue.popleft()
                continue
            # A request larger than max_batch_size runs alone rather than being refused.
            if batch and (item.key != batch[0].key or total + item.size > self._max_batch):
                break
            batch.append(self._queue.popleft())
            total += item.size
            if total >= self._max_batch:
                break
        return batch

    async def _execute(self, batch: list[_Pending]) -> None:
        total = sum(item.size for item in batch)
        if len(batch) == 1:
            inputs = batch[0].inputs
        else:
            inputs = {name: np.concatenate([item.inputs[name] for item in batch]) for name in batch[0].inputs}
        started = time.perf_counter()
        self.batches += 1
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(self._executor, self._call, inputs)
            for name, out in outputs.items():
                if out.ndim == 0 or out.shape[0] != total:
                    raise MlmeshError(
                        f"model {self._model!r} output {name!r} has shape {list(out.shape)} "
                        f"for a batch of {total}; expected a leading dimension of {total}"
                    )
        except Exception as e:
            metrics.MODEL_CALLS.labels(self._model, "error").inc()
            error = e if isinstance(e, MlmeshError) else MlmeshError(f"model {self._model!r} failed: {e}")
            log.warning("model call failed", model=self._model, batch=total, error=str(e))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        metrics.MODEL_CALLS.labels(self._model, "ok").inc()
        metrics.MODEL_CALL_SECONDS.labels(self._model).observe(time.perf_counter() - started)
        metrics.BATCH_SIZE.labels(self._model).observe(total)
        offset = 0
        for item in batch:
            if not item.future.done():
                item.future.set_result(
                    {name: out[offset : offset + item.size] for name, out in outputs.items()}
                )
            offset += item.size

    def _fail_all(self, error: MlmeshError) -> None:
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(error)
        metrics.QUEUE_DEPTH.labels(self._model).set(0)
