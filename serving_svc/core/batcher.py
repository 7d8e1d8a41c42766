"""Dynamic batching: concurrent requests for one model version share one model call.

TensorFlow Serving's knobs (`BatchingOptions`):

- a batch closes when it holds `max_batch_size` examples or when its oldest
  request has waited `batch_timeout_micros`, whichever comes first;
- `max_enqueued_batches` bounds the queue (in batches of `max_batch_size`),
  `max_queue` too (in requests, the older setting): beyond either a request
  gets RESOURCE_EXHAUSTED at once;
- `num_batch_threads` batches run at once, each in its own thread (the event
  loop keeps accepting requests meanwhile; while every thread is busy the
  queued batches keep growing);
- with `allowed_batch_sizes`, a batch is padded with zero rows up to the next
  allowed size (fewer distinct shapes for the graph) and the padding's
  outputs are sliced off.

A request larger than `max_batch_size` is neither refused nor split: it runs
as a batch of its own (unpadded). A request whose deadline (absolute, on
`time.monotonic()`) passes while queued is answered DEADLINE_EXCEEDED and
never reaches the model. The deadline is passed to `submit`, or else read
from `REQUEST_DEADLINE`, which the server's interceptor sets per call.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from mlmesh.errors import MlmeshError, NotFound, ResourceExhausted, Unavailable
from mlmesh.logging import get_logger

from serving_svc.core import metrics
from serving_svc.core.batch_options import BatchingOptions

log = get_logger(__name__)

ModelCall = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]

# The current request's deadline on time.monotonic(), None without one (set by the gRPC edge).
REQUEST_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "request_deadline", default=None
)


class DeadlineExceeded(MlmeshError):
    status = "DEADLINE_EXCEEDED"


@dataclass
class _Pending:
    inputs: Mapping[str, np.ndarray]
    size: int
    # Requests can share a batch only if every non-batch dimension agrees.
    key: tuple[tuple[str, tuple[int, ...]], ...]
    future: asyncio.Future[dict[str, np.ndarray]]
    deadline: float | None
    enqueued: float = field(default_factory=time.monotonic)
    taken: bool = False  # in a batch handed to the model


class Batcher:
    """The batching queue of one servable.

    Not thread-safe: `submit`, `reconfigure` and `close` must be called on the
    event loop that `start` ran on. Model calls run on the batcher's own pool
    of `num_batch_threads` threads (or on `executor`, if given).
    """

    def __init__(
        self,
        call: ModelCall,
        *,
        model: str,
        options: BatchingOptions,
        batch_cap: int | None = None,
        executor: Executor | None = None,
        on_close: Callable[[Batcher], None] | None = None,
    ) -> None:
        self._call = call
        self._model = model
        self._cap = batch_cap
        self._opts = options.capped(batch_cap)
        self._shared_executor = executor
        self._pool: ThreadPoolExecutor | None = None
        self._on_close = on_close
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_units = 0  # sum of min(size, max_batch_size): the queue's length in examples
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False
        self.batches = 0  # model calls made; read by tests and logs

    @property
    def model(self) -> str:
        return self._model

    @property
    def options(self) -> BatchingOptions:
        return self._opts

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self._model}")

    def reconfigure(self, options: BatchingOptions) -> None:
        """Apply new knobs; queued requests stay queued, running batches finish as they were."""
        options = options.capped(self._cap)
        if self._pool is not None and options.num_batch_threads != self._opts.num_batch_threads:
            self._pool.shutdown(wait=False)  # its running calls finish; the next batch starts a new pool
            self._pool = None
        self._opts = options
        self._wakeup.set()

    async def submit(
        self, inputs: Mapping[str, np.ndarray], size: int, *, deadline: float | None = None
    ) -> dict[str, np.ndarray]:
        """Queue one validated request and wait for its slice of the outputs.

        Raises ResourceExhausted when the queue is full, DeadlineExceeded when
        `deadline` (default: REQUEST_DEADLINE) passes first, Unavailable when
        the batcher is closed, MlmeshError (INTERNAL) when the model call fails.
        """
        if deadline is None:
            deadline = REQUEST_DEADLINE.get()
        if self._closed:
            raise Unavailable(f"model {self._model!r} is unloading; retry")
        self._check_room(size)
        key = tuple(sorted((name, arr.shape[1:]) for name, arr in inputs.items()))
        future: asyncio.Future[dict[str, np.ndarray]] = asyncio.get_running_loop().create_future()
        pending = _Pending(inputs, size, key, future, deadline)
        self._queue.append(pending)
        self._queued_units += min(size, self._opts.max_batch_size)
        metrics.REQUESTS.labels(self._model).inc()
        metrics.EXAMPLES.labels(self._model).inc(size)
        metrics.QUEUE_DEPTH.labels(self._model).set(len(self._queue))
        self._wakeup.set()
        if deadline is None:
            return await future
        try:
            return await asyncio.wait_for(future, max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            self._count_expired(pending)
            raise self._expired() from None
        except asyncio.CancelledError:
            # gRPC cancels the call at the same deadline, and may do so first; the client's own
            # deadline (or Envoy's copy of it) passes before ours and arrives as a cancel.
            if time.monotonic() >= deadline:
                self._count_expired(pending)
            elif not pending.taken:
                metrics.CANCELLED_QUEUED.labels(self._model).inc()
            raise

    def _count_expired(self, pending: _Pending) -> None:
        if not pending.taken:  # it never reaches the model: _take_batch skips it
            metrics.DEADLINE_EXPIRED.labels(self._model).inc()

    def _check_room(self, size: int) -> None:
        opts = self._opts
        if len(self._queue) >= opts.max_queue:
            metrics.REJECTED.labels(self._model).inc()
            raise ResourceExhausted(
                f"model {self._model!r} has {len(self._queue)} requests queued, the limit (max_queue) "
                f"is {opts.max_queue}; retry later"
            )
        units = self._queued_units + min(size, opts.max_batch_size)
        batches = -(-units // opts.max_batch_size)
        if batches > opts.max_enqueued_batches:
            metrics.REJECTED.labels(self._model).inc()
            queued = -(-self._queued_units // opts.max_batch_size)
            raise ResourceExhausted(
                f"model {self._model!r} has {queued} batches queued, the limit (max_enqueued_batches) "
                f"is {opts.max_enqueued_batches}; retry later"
            )

    def _expired(self) -> DeadlineExceeded:
        return DeadlineExceeded(f"deadline passed while queued for model {self._model!r}; it was not run")

    async def close(self) -> None:
        """Stop the batching task; requests still queued get Unavailable, running batches finish."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._fail_all(Unavailable(f"model {self._model!r} was unloaded; retry"))
        if self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        if self._on_close is not None:
            self._on_close(self)

    async def _run(self) -> None:
        try:
            while True:
                if not self._queue or len(self._running) >= self._opts.num_batch_threads:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                await self._wait_for_batch()
                batch = self._take_batch()
                metrics.QUEUE_DEPTH.labels(self._model).set(len(self._queue))
                if batch:
                    task = asyncio.get_running_loop().create_task(self._execute(batch))
                    self._running.add(task)
                    task.add_done_callback(self._batch_done)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # a bug here would strand every waiter; fail them loudly instead
            log.exception("batcher crashed", model=self._model)
            self._closed = True
            self._fail_all(MlmeshError(f"model {self._model!r} batcher failed: {e}"))
            raise

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._wakeup.set()

    def _ready_examples(self) -> int:
        """Examples at the head of the queue that could share one batch (capped)."""
        total, key = 0, None
        limit = self._opts.max_batch_size
        for item in self._queue:
            if item.future.done():
                continue
            if key is None:
                key = item.key
            elif item.key != key:
                break
            total += item.size
            if total >= limit:
                break
        return total

    async def _wait_for_batch(self) -> None:
        while self._ready_examples() < self._opts.max_batch_size:
            head = next((item for item in self._queue if not item.future.done()), None)
            if head is None:
                return
            remaining = head.enqueued + self._opts.timeout_s - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)

    def _take_batch(self) -> list[_Pending]:
        batch: list[_Pending] = []
        total = 0
        limit = self._opts.max_batch_size
        now = time.monotonic()
        while self._queue:
            item = self._queue[0]
            if item.future.done():  # the client gave up (or its deadline passed) while waiting
                self._pop()
                continue
            if item.deadline is not None and item.deadline <= now:
                self._pop()
                self._count_expired(item)
                item.future.set_exception(self._expired())
                continue
            # A request larger than max_batch_size runs alone rather than being refused.
            if batch and (item.key != batch[0].key or total + item.size > limit):
                break
            batch.append(self._pop())
            item.taken = True
            total += item.size
            if total >= limit:
                break
        return batch

    def _pop(self) -> _Pending:
        item = self._queue.popleft()
        self._queued_units = max(0, self._queued_units - min(item.size, self._opts.max_batch_size))
        return item

    def _executor(self) -> Executor:
        if self._shared_executor is not None:
            return self._shared_executor
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                self._opts.num_batch_threads, thread_name_prefix=f"batch-{self._model}"
            )
        return self._pool

    async def _execute(self, batch: list[_Pending]) -> None:
        total = sum(item.size for item in batch)
        padded = self._opts.padded_size(total)
        if len(batch) == 1 and padded == total:
            inputs = batch[0].inputs
        else:
            inputs = {
                name: _concat([item.inputs[name] for item in batch], padded - total)
                for name in batch[0].inputs
            }
        if padded > total:
            metrics.PADDED_EXAMPLES.labels(self._model).inc(padded - total)
        started = time.perf_counter()
        self.batches += 1
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(self._executor(), self._call, inputs)
            for name, out in outputs.items():
                if out.ndim == 0 or out.shape[0] != padded:
                    raise MlmeshError(
                        f"model {self._model!r} output {name!r} has shape {list(out.shape)} "
                        f"for a batch of {padded}; expected a leading dimension of {padded}"
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
        self._queued_units = 0
        metrics.QUEUE_DEPTH.labels(self._model).set(0)


def _concat(parts: list[np.ndarray], padding: int) -> np.ndarray:
    if padding:
        parts = [*parts, np.zeros((padding, *parts[0].shape[1:]), parts[0].dtype)]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class BatchingRegistry:
    """Batching options per model (defaults plus run-time overrides) and the live
    batchers that follow them: `set` reconfigures running batchers at once and
    applies to versions loaded later. Not thread-safe: one event loop."""

    def __init__(self, defaults: BatchingOptions | None = None) -> None:
        self.defaults = defaults or BatchingOptions()
        self._overrides: dict[str, BatchingOptions] = {}
        self._live: dict[str, list[Batcher]] = {}

    def options_for(self, model: str) -> BatchingOptions:
        return self._overrides.get(model, self.defaults)

    def models(self) -> list[str]:
        """Models with a live batcher."""
        return sorted(m for m, batchers in self._live.items() if batchers)

    def require(self, model: str) -> None:
        """NotFound naming the loaded models unless `model` has a live batcher."""
        if model not in self.models():
            raise NotFound(f"model {model!r} is not loaded; loaded models: {self.models() or 'none'}")

    def create(
        self, call: ModelCall, *, model: str, batch_cap: int | None = None, executor: Executor | None = None
    ) -> Batcher:
        """A started batcher for a new version of `model` (call on the loop)."""
        batcher = Batcher(
            call,
            model=model,
            options=self.options_for(model),
            batch_cap=batch_cap,
            executor=executor,
            on_close=self._forget,
        )
        self._live.setdefault(model, []).append(batcher)
        batcher.start()
        return batcher

    def set(self, model: str | None, changes: Mapping[str, Any]) -> dict[str, BatchingOptions]:
        """Change some knobs of one model (or, with None, of the defaults and every model).

        All-or-nothing: InvalidArgument names the bad field before anything
        changes; NotFound for a model without a live batcher. Returns the
        resulting options per model it touched.
        """
        if model is not None:
            self.require(model)
            updated = {model: self.options_for(model).replace(**changes)}
        else:
            defaults = self.defaults.replace(**changes)
            updated = {
                m: self.options_for(m).replace(**changes) for m in set(self.models()) | set(self._overrides)
            }
            self.defaults = defaults
        for name, options in updated.items():
            if model is not None or name in self._overrides:
                self._overrides[name] = options
            for batcher in self._live.get(name, []):
                batcher.reconfigure(options)
        return updated if model is not None else {m: updated[m] for m in self.models() if m in updated}

    def _forget(self, batcher: Batcher) -> None:
        live = self._live.get(batcher.model, [])
        if batcher in live:
            live.remove(batcher)
