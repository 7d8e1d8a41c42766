"""The training worker's loop.

    AcquireWork → (build the model once per job) → read the job's layout
    from the shards → leased partitions from a feed (`mlmesh.feed`: the next
    `read_ahead` partitions leased and loaded, local cache else ingest,
    while this one trains; one heartbeat renews every lease) → shuffled
    batches → per batch: pull parameters, compute gradients, push them →
    CompleteTask → ...

Placement is read from the shards (`placement.read_layout`), not recomputed:
a dense variable is whole on the shard the coordinator chose, or - when it
partitioned it - split in blocks of rows over all shards; then the worker
pulls every shard's block and concatenates them, and pushes each shard the
gradient of its block. Embedding rows are routed by `mlmesh.keys`' hash.

Clocks. The worker joins the job on every shard (JoinJob: the clock to start
from) before its first task, leaves when the queue has nothing for it (so a
SYNC barrier does not wait for an idle worker), and pulls and pushes step c
with clock c. The shards enforce the job's consistency model; the worker
only pipelines: with `prefetch`, the pull for step c+1 is sent while step c
computes, and the push of step c overlaps the compute of c+1. Under ASYNC
that adds staleness (the prefetched values miss the worker's own last
update); under SYNC and BOUNDED the shard holds the prefetched pull back
until the model allows it, so the guarantee is the same with or without.
Pushes stay in step order, one at a time, because a shard ignores a step
below the worker's clock. A shard that refuses a push as outside the model
(a SYNC step that moved on while this worker's lease had lapsed, a step
beyond the staleness bound) makes the worker drop that batch and join
again.

Runs on one asyncio event loop; TensorFlow compute runs in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from mlmesh import tensor
from mlmesh.errors import FailedPrecondition, InvalidArgument, MlmeshError, Unavailable
from mlmesh.feed import IDLE, Item, LeaseLost, PartitionFeed
from mlmesh.logging import get_logger

from trainer_svc.core import batching, metrics, placement
from trainer_svc.core.cache import PartitionCache
from trainer_svc.core.ports import IngestPort, ParamPort
from trainer_svc.core.spec import JobSpec
from trainer_svc.core.types import Consistency, FeatureInfo, PullResult, TaskInfo

log = get_logger(__name__)


@dataclass(frozen=True)
class Assignment:
    """What AcquireWork hands a worker."""

    job_id: str
    spec: JobSpec
    ingest_addr: str
    ps_addrs: tuple[str, ...]


class CoordinatorPort(Protocol):
    async def acquire_work(self, worker_id: str, device: str) -> Assignment | None: ...

    async def report_progress(
        self, job_id: str, worker_id: str, steps: int, examples: int, loss_sum: float
    ) -> str:
        """Returns the job's state name ("RUNNING", "CANCELLED", ...)."""
        ...


class Connector(Protocol):
    def connect(self, ingest_addr: str, ps_addrs: Sequence[str]) -> tuple[IngestPort, ParamPort]: ...


class Runner(Protocol):
    """The TensorFlow side (trainer_svc.core.step.StepRunner)."""

    features: list[str]
    label: str
    dense_names: list[str]
    sparse_names: list[str]

    def inputs(self, batch: Mapping[str, np.ndarray]) -> Any: ...

    def rows_needed(self, x: Any) -> dict[str, np.ndarray]: ...

    def compute(
        self,
        dense: Mapping[str, np.ndarray],
        rows: Mapping[str, tuple[np.ndarray, np.ndarray]],
        x: Any,
        y: np.ndarray,
    ) -> Any: ...


@dataclass(frozen=True)
class WorkerConfig:
    worker_id: str
    device: str = "CPU:0"
    poll_seconds: float = 1.0
    lease_seconds: float = 60.0
    report_every_seconds: float = 2.0
    prefetch: bool = True
    read_ahead: int = 1  # partitions leased and read while one trains


class JobStopped(Exception):
    """The coordinator says the job is no longer RUNNING."""


@dataclass
class _Progress:
    steps: int = 0
    examples: int = 0
    loss_sum: float = 0.0
    last_report: float = field(default_factory=time.monotonic)


class TrainingWorker:
    def __init__(
        self,
        config: WorkerConfig,
        coordinator: CoordinatorPort,
        connector: Connector,
        cache: PartitionCache,
        make_runner: Callable[[JobSpec, dict[str, FeatureInfo]], Awaitable[Runner]],
    ) -> None:
        self.config = config
        self.coordinator = coordinator
        self.connector = connector
        self.cache = cache
        self.make_runner = make_runner
        self._runner: tuple[str, Runner] | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Train whatever the coordinator hands out until `stop` is set."""
        log.info("worker started", worker_id=self.config.worker_id, device=self.config.device)
        while not stop.is_set():
            try:
                assignment = await self.coordinator.acquire_work(self.config.worker_id, self.config.device)
            except MlmeshError as e:
                log.warning("acquire work failed", error=e.message)
                assignment = None
            if assignment is None:
                await _sleep_or_stop(stop, self.config.poll_seconds)
                continue
            try:
                await self.train_job(assignment, stop)
                # A queue that is done stays RUNNING until the coordinator notices (it then
                # evaluates), and a continuous job's may grow again: look again after a poll.
                await _sleep_or_stop(stop, self.config.poll_seconds)
            except JobStopped as e:
                log.info("job stopped", job_id=assignment.job_id, state=str(e))
            except MlmeshError as e:
                log.warning("job interrupted", job_id=assignment.job_id, error=e.message)
                await _sleep_or_stop(stop, self.config.poll_seconds)
            except Exception:
                log.exception("job interrupted", job_id=assignment.job_id)
                await _sleep_or_stop(stop, self.config.poll_seconds)

    async def train_job(self, a: Assignment, stop: asyncio.Event) -> None:
        """Lease and train tasks of job `a` until its queue is done (or `stop`)."""
        ingest, params = self.connector.connect(a.ingest_addr, a.ps_addrs)
        if self._runner is None or self._runner[0] != a.job_id:
            self._runner = None  # free the previous job's model first
            schema = (await ingest.get_dataset(a.spec.train_dataset)).features
            self._runner = (a.job_id, await self.make_runner(a.spec, schema))
            log.info("model built", job_id=a.job_id, model=a.spec.model)
        runner = self._runner[1]
        layout = await placement.read_layout(params, a.job_id, runner.dense_names, runner.sparse_names)
        if layout.partitioned:
            log.info("partitioned variables", job_id=a.job_id, variables=sorted(layout.partitioned))
        job = _JobRun(self, a, ingest, params, runner, layout)
        feed: PartitionFeed[dict[str, np.ndarray]] = PartitionFeed(
            ingest,
            a.job_id,
            self.config.worker_id,
            load=job.load_partition,
            depth=self.config.read_ahead + 1,  # the partition training, and those read ahead
            lease_seconds=self.config.lease_seconds,
            poll_seconds=self.config.poll_seconds,
        )
        try:
            async with feed:
                async for item in feed:
                    if stop.is_set():
                        return
                    if item is IDLE:
                        await job.leave()  # nothing to do now: the others must not wait for us
                        # Report what it trained now, not when the next report is due: at the
                        # end of a job the last tasks complete elsewhere, and a report that
                        # arrives after the job finished no longer counts.
                        await job.flush_report()
                        continue
                    await job.join()
                    await job.run_task(feed, item, stop)
            log.info("job queue done", job_id=a.job_id)
        finally:
            with contextlib.suppress(MlmeshError, JobStopped):
                await job.leave()
                await job.report()


class _JobRun:
    """One job's training state inside a worker: step counter, pending progress."""

    def __init__(
        self,
        worker: TrainingWorker,
        a: Assignment,
        ingest: IngestPort,
        params: ParamPort,
        runner: Runner,
        layout: placement.Layout,
    ) -> None:
        self.w = worker
        self.cfg = worker.config
        self.a = a
        self.ingest = ingest
        self.params = params
        self.runner = runner
        self.n = params.num_shards
        self.layout = layout
        self.consistency = Consistency.parse(a.spec.consistency)
        # SYNC and BOUNDED count every worker's steps on every shard, so every step
        # reaches every shard; ASYNC skips shards a step has nothing for.
        self.every_shard = self.consistency.mode != "async"
        self.clock = 0  # the step computed next (from JoinJob)
        self.acked = 0  # steps whose pushes every shard acknowledged
        self.joined = False
        # Exactly-once jobs: the (lease id, task id) of the partition training now.
        self.exactly_once = a.spec.exactly_once
        self.lease: tuple[str, str] = ("", "")
        # Shards whose last answer was big enough to be worth a chunked stream (PullStream).
        self._stream = [False] * self.n
        self.progress = _Progress()

    # ----- membership ------------------------------------------------------------------------

    async def join(self) -> None:
        """Enter the job on every shard (idempotent); continue from the highest clock they name."""
        if self.joined:
            return
        clocks = await asyncio.gather(
            *(self.params.join(s, self.a.job_id, self.cfg.worker_id) for s in range(self.n))
        )
        self.clock = self.acked = max(clocks)
        self.joined = True
        log.info("joined", job_id=self.a.job_id, clock=self.clock, consistency=str(self.consistency))

    async def leave(self) -> None:
        if not self.joined:
            return
        self.joined = False
        results = await asyncio.gather(
            *(self.params.leave(s, self.a.job_id, self.cfg.worker_id) for s in range(self.n)),
            return_exceptions=True,
        )
        failed = [str(r) for r in results if isinstance(r, BaseException)]
        if failed:  # the lease runs out on its own
            log.warning("leave failed on some shards", errors=failed)

    # ----- progress --------------------------------------------------------------------------

    async def maybe_report(self) -> None:
        if time.monotonic() - self.progress.last_report >= self.cfg.report_every_seconds:
            await self.report()

    async def flush_report(self) -> None:
        """Report now if anything is unreported, else as usual (an idle worker polls)."""
        if self.progress.steps or self.progress.examples:
            await self.report()
        else:
            await self.maybe_report()

    async def report(self) -> None:
        """Send the deltas; raise JobStopped unless the job is still RUNNING.

        A coordinator that cannot be reached keeps the deltas for the next report.
        """
        p = self.progress
        steps, examples, loss_sum = p.steps, p.examples, p.loss_sum
        try:
            state = await self.w.coordinator.report_progress(
                self.a.job_id, self.cfg.worker_id, steps, examples, loss_sum
            )
        except Unavailable as e:
            log.warning("progress report failed; kept for the next one", error=e.message)
            p.last_report = time.monotonic()
            return
        p.steps -= steps
        p.examples -= examples
        p.loss_sum -= loss_sum
        p.last_report = time.monotonic()
        if state != "RUNNING":
            raise JobStopped(state)

    # ----- one task ----------------------------------------------------------------------------

    async def load_partition(self, task: TaskInfo) -> dict[str, np.ndarray]:
        return await load_partition(self.w.cache, self.ingest, task)

    async def run_task(
        self,
        feed: PartitionFeed[dict[str, np.ndarray]],
        item: Item[dict[str, np.ndarray]],
        stop: asyncio.Event,
    ) -> None:
        """Train one partition and complete its task; a lost lease abandons it."""
        spec = self.a.spec
        task: TaskInfo = item.task
        columns = item.data or {}
        if self.exactly_once:
            self.lease = (task.lease_id, task.task_id)
        needed = [*self.runner.features, self.runner.label]
        missing = [c for c in needed if c not in columns]
        if missing and task.num_records > 0:
            raise InvalidArgument(
                f"partition {task.partition_id} of {task.dataset!r} lacks features {missing}"
            )
        rng = np.random.default_rng(
            batching.batch_seed(spec.seed, task.epoch, task.partition_id, task.attempt)
        )
        batches = (
            list(batching.shuffled_batches({c: columns[c] for c in needed}, spec.batch_size, rng))
            if task.num_records > 0
            else []
        )
        failed = 0
        log.debug("task leased", partition=task.partition_id, epoch=task.epoch, batches=len(batches))

        def prepare(i: int) -> tuple[Any, np.ndarray, dict[str, np.ndarray]]:
            x = self.runner.inputs(batches[i])
            return x, batches[i][self.runner.label], self.runner.rows_needed(x)

        prepared = prepare(0) if batches else None
        pull_next: asyncio.Future[PullResult] | None = None
        push_prev: asyncio.Future[None] | None = None
        try:
            for i in range(len(batches)):
                if stop.is_set():
                    return
                if item.lost:  # the feed could not renew the lease: the task is someone else's now
                    metrics.TASKS.labels("lease_lost").inc()
                    log.warning("lease lost; task abandoned", partition=task.partition_id)
                    feed.drop(item)
                    await self.settle(task, commit=False)
                    return
                assert prepared is not None
                x, y, rows = prepared
                t0 = time.perf_counter()
                try:
                    if pull_next is None:
                        pull_next = asyncio.ensure_future(self.pull(rows, self.clock))
                    pulled = await pull_next
                    pull_next = None
                    if pulled.clock > self.clock:  # SYNC moved on without us (our lease lapsed)
                        metrics.RESYNCS.labels("behind").inc()
                        self.clock = self.acked = pulled.clock
                    t1 = time.perf_counter()
                    prepared = prepare(i + 1) if i + 1 < len(batches) else None
                    if self.cfg.prefetch and prepared is not None:
                        pull_next = asyncio.ensure_future(self.pull(prepared[2], self.clock + 1))
                    try:
                        result = await asyncio.to_thread(self.runner.compute, pulled.dense, pulled.rows, x, y)
                    except Exception as e:  # bad records (say, ids outside a table): drop the batch, loudly
                        failed += 1
                        metrics.SKIPPED_BATCHES.labels("compute_error").inc()
                        log.error(
                            "batch failed; skipped",
                            partition=task.partition_id,
                            error=f"{type(e).__name__}: {e}",
                        )
                        result = None
                    t2 = time.perf_counter()
                    if push_prev is not None:
                        await push_prev
                        push_prev = None
                    if result is not None and not np.isfinite(result.loss):
                        metrics.SKIPPED_BATCHES.labels("nonfinite_loss").inc()
                        log.warning(
                            "non-finite loss; batch skipped", loss=result.loss, partition=task.partition_id
                        )
                        result = None
                    # A skipped batch still ticks the clock (an empty push), so no barrier waits for it.
                    step, self.clock = self.clock, self.clock + 1
                    push_prev = asyncio.ensure_future(self.push(step, result))
                    if not self.cfg.prefetch:
                        await push_prev
                        push_prev = None
                except FailedPrecondition as e:
                    # Outside the consistency model (see the module doc): drop the batch, join again.
                    metrics.RESYNCS.labels("refused").inc()
                    log.warning("push refused by the consistency model; joining again", error=e.message)
                    pull_next = await _cancel(pull_next)
                    push_prev = await _cancel(push_prev)
                    self.joined = False
                    await self.join()
                    continue
                if result is not None:
                    self.record(len(y), result.loss)
                t3 = time.perf_counter()
                metrics.STEP_PHASE.labels("pull").observe(t1 - t0)
                metrics.STEP_PHASE.labels("compute").observe(t2 - t1)
                metrics.STEP_PHASE.labels("push").observe(t3 - t2)
                await self.maybe_report()
            if push_prev is not None:
                await push_prev
                push_prev = None
            if batches and failed == len(batches):
                # Nothing trained: a systematic fault (model vs data), not bad records. Leave
                # the task to expire rather than report it done.
                feed.drop(item)
                raise InvalidArgument(
                    f"every batch of partition {task.partition_id} of {task.dataset!r} failed to compute"
                )
        finally:
            await _cancel(pull_next)
            await _cancel(push_prev)
        try:
            await feed.complete(item)
            metrics.TASKS.labels("completed").inc()
        except LeaseLost as e:
            # The lease expired and the task went back to the queue: another worker will
            # train it. Our pushes were still useful updates, unless the job is exactly-once:
            # then the shards drop them.
            metrics.TASKS.labels("lease_lost").inc()
            log.warning("task completion refused (lease expired)", partition=task.partition_id, error=str(e))
            await self.settle(task, commit=False)
            return
        await self.settle(task, commit=True)

    async def settle(self, task: TaskInfo, commit: bool) -> None:
        """Exactly-once jobs: after ingest completed the task (the commit point), apply its
        staged pushes on every shard; after the lease was lost, drop them. Should this worker
        die in between, the coordinator settles the lease by asking ingest what became of it."""
        if not self.exactly_once:
            return
        self.lease = ("", "")
        job_id = self.a.job_id
        if commit:
            applied = await asyncio.gather(
                *(self.params.commit_lease(s, job_id, task.lease_id, task.task_id) for s in range(self.n))
            )
            log.debug("task committed", task=task.task_id, pushes=applied)
        else:
            results = await asyncio.gather(
                *(self.params.abort_lease(s, job_id, task.lease_id) for s in range(self.n)),
                return_exceptions=True,
            )
            failed = [str(r) for r in results if isinstance(r, BaseException)]
            if failed:  # the coordinator aborts it once ingest says the lease expired
                log.warning("abort failed on some shards", task=task.task_id, errors=failed)

    def record(self, examples: int, loss: float) -> None:
        self.progress.steps += 1
        self.progress.examples += examples
        self.progress.loss_sum += loss
        metrics.STEPS.inc()
        metrics.EXAMPLES.inc(examples)
        metrics.LOSS.set(loss)

    # ----- parameter server ------------------------------------------------------------------

    async def pull(self, rows: Mapping[str, np.ndarray], clock: int) -> PullResult:
        """Values for step `clock`: dense variables from their shards (partitioned ones from
        every shard, reassembled) and the given rows of sparse ones, all shards at once."""
        split = {name: self.layout.sparse[name].split(r) for name, r in rows.items()}
        parts = list(self.layout.partitioned)
        pushed = self.acked

        async def one(shard: int) -> PullResult | None:
            dense = [*self.layout.whole[shard], *parts]
            shard_rows = {name: parts[shard][1] for name, parts in split.items() if len(parts[shard][1])}
            if not dense and not shard_rows and not self.every_shard:
                return None
            result = await self.params.pull(
                shard,
                self.a.job_id,
                dense,
                shard_rows,
                self.cfg.worker_id,
                clock,
                pushed,
                self._stream[shard],
            )
            nbytes = sum(a.nbytes for a in result.dense.values()) + sum(
                v.nbytes for _, v in result.rows.values()
            )
            self._stream[shard] = nbytes >= tensor.STREAM_BYTES
            return result

        results = await asyncio.gather(*(one(s) for s in range(self.n)))
        out = PullResult(clock=max((r.clock for r in results if r is not None), default=clock))
        for result in results:
            if result is not None:
                out.dense.update(result.dense)
        for name in parts:  # each shard answered its block
            out.dense[name] = self.layout.assemble(name, [r.dense[name] for r in results if r is not None])
        for name, r in rows.items():
            values: np.ndarray | None = None
            for shard, (pos, _) in enumerate(split[name]):
                result = results[shard]
                if not len(pos) or result is None:
                    continue
                _, got = result.rows[name]
                if values is None:
                    values = np.empty((len(r), *got.shape[1:]), dtype=got.dtype)
                values[pos] = got
            out.rows[name] = (r, values if values is not None else np.zeros((0,), dtype=np.float32))
        return out

    async def push(self, step: int, result: Any | None) -> None:
        """Gradients of step `step` to their owning shards; None pushes nothing but the clock tick."""
        dense_grads = result.dense_grads if result is not None else {}
        row_grads = result.row_grads if result is not None else {}
        split = {name: self.layout.sparse[name].split(r) for name, (r, _) in row_grads.items()}

        async def one(shard: int) -> None:
            dense = {name: dense_grads[name] for name in self.layout.whole[shard] if name in dense_grads}
            rows = {
                name: (self.layout.global_rows(name, shard), self.layout.part(name, dense_grads[name], shard))
                for name in self.layout.partitioned
                if name in dense_grads
            }
            for name, parts in split.items():
                pos, global_rows = parts[shard]
                if len(pos):
                    rows[name] = (global_rows, row_grads[name][1][pos])
            if not dense and not rows and not self.every_shard:
                return
            applied = await self.params.push(
                shard, self.a.job_id, self.cfg.worker_id, step, dense, rows, self.lease
            )
            if not applied and result is not None:
                metrics.PUSHES_IGNORED.inc()

        await asyncio.gather(*(one(s) for s in range(self.n)))
        self.acked = max(self.acked, step + 1)


async def load_partition(cache: PartitionCache, ingest: IngestPort, task: TaskInfo) -> dict[str, np.ndarray]:
    """A task's partition: from the worker's cache, else from ingest (and then cached)."""
    if task.num_records == 0:
        return {}
    # In a thread: a hit checksums the whole file (~5 ms per 30 MB).
    columns = await asyncio.to_thread(cache.get, task.dataset, task.partition_id, task.num_records)
    if columns is not None:
        metrics.PARTITION_READS.labels("cache").inc()
        return columns
    columns = await ingest.read_partition(task.dataset, task.partition_id, task.num_records)
    metrics.PARTITION_READS.labels("ingest").inc()
    await asyncio.to_thread(cache.put, task.dataset, task.partition_id, columns)
    return columns


async def _cancel(fut: asyncio.Future[Any] | None) -> None:
    """Cancel an in-flight pull or push and wait for it to finish; returns None (for assignment)."""
    if fut is not None and not fut.done():
        fut.cancel()
    if fut is not None:
        with contextlib.suppress(BaseException):
            await fut


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
