"""The job coordinator: creates jobs, hands the running one to workers,
watches its queue, and evaluates and exports it when training is done.

Runs on one asyncio event loop; its methods are not thread-safe. TensorFlow
work (building, evaluating, exporting) runs in threads, one at a time
(`_tf_lock`), because Keras keeps process-global naming state. TensorFlow is
imported on first use so the process serves health checks immediately.
"""

from __future__ import annotations

import asyncio
import importlib
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from mlmesh import keys, tensor
from mlmesh.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    MlmeshError,
    NotFound,
    Unavailable,
)
from mlmesh.logging import get_logger

from trainer_svc.core import metrics, placement
from trainer_svc.core.jobs import Job, JobState
from trainer_svc.core.manifest import build_manifest
from trainer_svc.core.ports import IngestPort, ParamPort
from trainer_svc.core.spec import JobSpec, validate_job_id, validate_spec
from trainer_svc.core.store import JobStore
from trainer_svc.core.types import DatasetInfo, QueueInfo

log = get_logger(__name__)
# How long a terminal job whose DropJob failed on some shard waits before it is asked again.
RELEASE_RETRY_SECONDS = 30.0


@dataclass(frozen=True)
class CoordinatorConfig:
    ingest_addr: str
    ps_addrs: tuple[str, ...]
    model_repo: Path
    eval_batch_size: int = 512
    worker_timeout_seconds: float = 30.0
    checkpoint_seconds: float = 60.0
    # Bound on the tensor bytes of one RegisterVariables / Pull request (a variable above it
    # registers through RegisterVariablesStream; its pulls are split by rows or streamed).
    request_bytes: int = 16 * 1024 * 1024
    # Dense variables of at least this many bytes are partitioned by rows over all
    # shards (mlmesh.keys.partitioned), decided when a job is first registered.
    min_partition_bytes: int = keys.MIN_PARTITION_BYTES


@dataclass
class _WorkerSeen:
    job_id: str
    device: str
    last_seen: float


class _TensorFlow:
    """The TensorFlow-using modules, imported in a thread on first use."""

    def __init__(self) -> None:
        self._modules: dict[str, ModuleType] | None = None

    async def load(self) -> dict[str, ModuleType]:
        if self._modules is None:
            names = ("tfmodel", "evaluate", "export")
            mods = await asyncio.to_thread(
                lambda: {n: importlib.import_module(f"trainer_svc.core.{n}") for n in names}
            )
            self._modules = mods
        return self._modules


class Coordinator:
    def __init__(
        self, config: CoordinatorConfig, store: JobStore, ingest: IngestPort, params: ParamPort
    ) -> None:
        self.config = config
        self.store = store
        self.ingest = ingest
        self.params = params
        self.jobs: dict[str, Job] = {}
        self._workers: dict[str, _WorkerSeen] = {}
        self._tf = _TensorFlow()
        self._tf_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._registered: set[str] = set()  # jobs whose variables this process registered
        self._finalizing: dict[str, asyncio.Task[None]] = {}
        self._exporting: dict[str, asyncio.Task[None]] = {}  # continuous jobs' version exports
        self._dirty: set[str] = set()
        self._last_checkpoint = time.time()
        self._release_after: dict[str, float] = {}  # job -> when to retry its DropJob

    # ----- lifecycle -------------------------------------------------------------------------

    def load(self) -> None:
        """Restore jobs from the store. Active jobs resume where they were:
        RUNNING re-registers (idempotent) and keeps training; EVALUATING and
        EXPORTING run their finalization again (export is atomic, so a crash
        mid-export left nothing visible)."""
        for job in self.store.load_all():
            self.jobs[job.job_id] = job
        self._update_gauges()
        log.info(
            "jobs loaded",
            count=len(self.jobs),
            active=[j.job_id for j in self.jobs.values() if j.state.active],
        )

    async def prewarm(self) -> None:
        """Import TensorFlow in the background so the first CreateJob is fast."""
        await self._tf.load()

    async def run_monitor(self, stop: asyncio.Event, interval: float) -> None:
        """Tick every `interval` seconds (or sooner when woken) until `stop`."""
        while not stop.is_set():
            try:
                await self.tick()
            except Exception:
                log.exception("monitor tick failed")
            self._wake.clear()
            waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(self._wake.wait())]
            await asyncio.wait(waiters, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()

    async def close(self) -> None:
        for task in [*self._finalizing.values(), *self._exporting.values()]:
            task.cancel()
        await asyncio.gather(*self._finalizing.values(), *self._exporting.values(), return_exceptions=True)
        self._flush()

    # ----- user API ------------------------------------------------------------------------

    async def create_job(self, spec: JobSpec, job_id: str = "") -> Job:
        """Validate and queue a job (PENDING); the monitor starts it when the trainer is free.

        Idempotent per job_id: the same spec returns the existing job, another
        spec is AlreadyExists.
        """
        spec = validate_spec(spec)
        if job_id:
            validate_job_id(job_id)
        else:
            job_id = f"job-{uuid.uuid4().hex[:12]}"
        existing = self._existing(job_id, spec)
        if existing is not None:
            return existing
        # The model first: a bad import path is the commonest mistake, and needs no peer.
        tf = await self._tf.load()
        async with self._tf_lock:
            ms = await asyncio.to_thread(tf["tfmodel"].build, spec)
        train = await self._dataset(spec.train_dataset, "train_dataset")
        if train.num_records == 0:
            raise FailedPrecondition(f"train_dataset {train.name!r} has no records yet; append data first")
        tf["tfmodel"].check_dataset(ms, train, "train_dataset")
        if spec.eval_dataset:
            evalset = await self._dataset(spec.eval_dataset, "eval_dataset")
            tf["tfmodel"].check_dataset(ms, evalset, "eval_dataset")
        existing = self._existing(job_id, spec)  # created meanwhile by a concurrent call
        if existing is not None:
            return existing
        job = Job(job_id=job_id, spec=spec)
        self.jobs[job_id] = job
        self._save(job)
        metrics.JOB_TRANSITIONS.labels(job.state.value).inc()
        self._update_gauges()
        log.info("job created", job_id=job_id, model=spec.model, train_dataset=spec.train_dataset)
        self._wake.set()
        return job

    def get_job(self, job_id: str) -> Job:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise NotFound(f"job {job_id!r} does not exist") from None

    def list_jobs(self) -> list[Job]:
        return sorted(self.jobs.values(), key=lambda j: (j.created_unix, j.job_id))

    def cancel_job(self, job_id: str) -> Job:
        """PENDING or active → CANCELLED (idempotent); SUCCEEDED/FAILED → FailedPrecondition."""
        job = self.get_job(job_id)
        if job.state == JobState.CANCELLED:
            return job
        if job.state.terminal:
            raise FailedPrecondition(
                f"job {job_id!r} already {job.state.value}; it can no longer be cancelled"
            )
        self._transition(job, JobState.CANCELLED, finished_unix=time.time())
        self._wake.set()
        return job

    # ----- worker API ----------------------------------------------------------------------

    def acquire_work(self, worker_id: str, device: str) -> Job | None:
        """The running job, or None; remembers the worker as active on it."""
        job = self._running()
        self._workers[worker_id] = _WorkerSeen(job.job_id if job else "", device, time.time())
        return job

    def report_progress(
        self, job_id: str, worker_id: str, steps: int, examples: int, loss_sum: float
    ) -> JobState:
        """Add a worker's deltas to its job; returns the job's state (workers stop unless RUNNING)."""
        job = self.get_job(job_id)
        now = time.time()
        prev = self._workers.get(worker_id)
        self._workers[worker_id] = _WorkerSeen(job_id, prev.device if prev else "", now)
        if job.state.active:  # late reports of a finishing job still count
            job.record_progress(now, steps, examples, loss_sum)
            self._dirty.add(job_id)
        return job.state

    # ----- monitor -------------------------------------------------------------------------

    async def tick(self) -> None:
        """One pass: advance the active job, or start the oldest pending one."""
        now = time.time()
        job = next((j for j in self.list_jobs() if j.state.active), None)
        if job is None:
            pending = next((j for j in self.list_jobs() if j.state == JobState.PENDING), None)
            if pending is not None:
                await self._start(pending)
        elif job.state == JobState.RUNNING:
            if job.job_id not in self._registered:
                await self._start(job)  # coordinator restarted: re-register (idempotent)
            if job.state == JobState.RUNNING and job.job_id in self._registered:
                if job.spec.exactly_once:
                    await self._settle_leases(job)
                await self._poll_queue(job)
                await self._maybe_checkpoint(job, now)
        elif job.job_id not in self._finalizing:
            self._begin_finalize(job)  # EVALUATING/EXPORTING left by a previous process
        await self._release_finished(now)
        for j in self.jobs.values():
            j.active_workers = self._active_workers(j.job_id, now) if j.state.active else 0
        self._flush()
        self._update_gauges()

    async def _start(self, job: Job) -> None:
        """Register the job's variables on the shards and enqueue its epochs → RUNNING."""
        spec = job.spec
        try:
            tf = await self._tf.load()
            async with self._tf_lock:

                def initial() -> tuple[dict[str, np.ndarray], list[str]]:
                    ms = tf["tfmodel"].build(spec)
                    return tf["tfmodel"].variable_values(ms), list(ms.sparse_variables)

                values, sparse = await asyncio.to_thread(initial)
            # What the shards already hold of this job (a restart) keeps its layout.
            registered = await self._registered_layout(job.job_id)
            partitioned = placement.partitioned_names(
                values, sparse, self.params.num_shards, self.config.min_partition_bytes, registered
            )
            plan = placement.plan_registration(
                values, sparse, self.params.num_shards, partitioned, registered
            )

            async def register(shard: int) -> None:
                budget = self.config.request_bytes
                for chunk in placement.chunk_specs(plan[shard], budget):
                    # A variable above the budget (alone in its chunk) streams its value.
                    big = sum(v.value.nbytes for v in chunk) > budget
                    await self.params.register(
                        shard, job.job_id, chunk, spec.optimizer, spec.options(), stream=big
                    )

            await asyncio.gather(*(register(s) for s in range(self.params.num_shards)))
            # A continuous job enqueues one epoch at a time (`_advance_continuous`).
            for epoch in range(1 if spec.continuous else spec.epochs):
                await self._enqueue(job, epoch)
            queue = await self.ingest.queue_status(job.job_id)
        except Unavailable as e:
            job.error = f"waiting to start: {e.message}"
            self._dirty.add(job.job_id)
            log.warning("job start deferred", job_id=job.job_id, error=e.message)
            return
        except MlmeshError as e:
            self._fail(job, f"could not start: {e.message}")
            return
        except Exception as e:
            log.exception("job start failed", job_id=job.job_id)
            self._fail(job, f"could not start: {type(e).__name__}: {e}")
            return
        if job.state.terminal:  # cancelled while starting
            return
        self._registered.add(job.job_id)
        job.tasks_total, job.tasks_completed, job.error = queue.total, queue.completed, ""
        if job.state == JobState.PENDING:
            self._transition(job, JobState.RUNNING, started_unix=time.time())
        log.info(
            "job running",
            job_id=job.job_id,
            variables=len(values),
            partitioned=partitioned,
            tasks=queue.total,
        )

    async def _enqueue(self, job: Job, epoch: int) -> None:
        spec = job.spec
        since = time.time() - spec.window_hours * 3600 if spec.window_hours else 0.0
        seed = _epoch_seed(spec.seed, epoch)
        await self.ingest.enqueue_epoch(job.job_id, spec.train_dataset, epoch, seed, since)

    async def _poll_queue(self, job: Job) -> None:
        try:
            queue = await self.ingest.queue_status(job.job_id)
            if job.spec.continuous:
                queue = await self._advance_continuous(job, queue)
        except MlmeshError as e:
            log.warning("queue status unavailable", job_id=job.job_id, error=e.message)
            return
        progress = (queue.total, queue.completed, sum(1 for e in queue.epochs if e[3] == e[4]))
        if (job.tasks_total, job.tasks_completed, job.epochs_completed) != progress:
            job.tasks_total, job.tasks_completed, job.epochs_completed = progress
            self._dirty.add(job.job_id)
        if job.spec.continuous:
            self._maybe_export_version(job)
            if len(queue.epochs) < job.spec.epochs:
                return  # more epochs to come
        if queue.done and job.state == JobState.RUNNING:
            job.train_seconds = time.time() - job.started_unix
            self._transition(job, JobState.EVALUATING)
            self._begin_finalize(job)

    async def _settle_leases(self, job: Job) -> int:
        """Exactly-once jobs: settle the leases the shards hold pushes for whose worker will not:
        commit those ingest completed (the worker died after completing), abort those that
        expired (it died, or lost the lease, mid-task). Returns how many stay staged."""
        n = self.params.num_shards
        try:
            infos = await asyncio.gather(*(self.params.shard_info(s) for s in range(n)))
            staged: dict[str, str] = {}
            for info in infos:
                shard_job = info.jobs.get(job.job_id)
                if shard_job is not None:
                    staged.update(shard_job.staged)
            waiting = 0
            for lease_id, task_id in staged.items():
                state = await self.ingest.lease_state(lease_id)
                if state == "completed":
                    await asyncio.gather(
                        *(self.params.commit_lease(s, job.job_id, lease_id, task_id) for s in range(n))
                    )
                    log.info("lease committed for its worker", job_id=job.job_id, task=task_id)
                elif state == "expired":
                    await asyncio.gather(
                        *(self.params.abort_lease(s, job.job_id, lease_id) for s in range(n))
                    )
                    log.info("expired lease aborted", job_id=job.job_id, task=task_id)
                else:
                    waiting += 1
            return waiting
        except MlmeshError as e:
            log.warning("leases not settled yet", job_id=job.job_id, error=e.message)
            return -1

    async def _advance_continuous(self, job: Job, queue: QueueInfo) -> QueueInfo:
        """Enqueue the next epoch once the last one has nothing left to hand out, over the
        dataset as it is then: partitions that arrived meanwhile join it. Enqueuing before
        the last task completes keeps the queue from looking done to the workers."""
        last = queue.epochs[-1] if queue.epochs else None
        nxt = last[0] + 1 if last else 0
        if nxt >= job.spec.epochs or (last is not None and last[1] > 0):
            return queue
        try:
            await self._enqueue(job, nxt)
        except FailedPrecondition as e:  # nothing in the window yet: try again next tick
            log.info("next epoch waits for data", job_id=job.job_id, epoch=nxt, reason=e.message)
            return queue
        log.info("epoch enqueued", job_id=job.job_id, epoch=nxt)
        return await self.ingest.queue_status(job.job_id)

    def _maybe_export_version(self, job: Job) -> None:
        """Continuous jobs: export a version for each newly completed epoch but the last
        (finalization exports that one), one export at a time, while training goes on."""
        if (
            job.epochs_exported >= job.epochs_completed
            or job.epochs_completed >= job.spec.epochs
            or job.job_id in self._exporting
        ):
            return
        task = asyncio.create_task(self._export_version(job), name=f"export-{job.job_id}")
        self._exporting[job.job_id] = task
        task.add_done_callback(lambda _: self._exporting.pop(job.job_id, None))

    async def _export_version(self, job: Job) -> None:
        epochs = job.epochs_completed
        try:
            path, version, scores = await self._snapshot_export(job, evaluate=True)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a failed intermediate export does not stop the training
            log.exception("version export failed", job_id=job.job_id, error=str(e))
            return
        if not job.state.active:
            return
        job.epochs_exported = epochs
        job.export_path, job.model_version, job.eval_metrics = str(path), version, scores
        self._dirty.add(job.job_id)
        log.info("version exported", job_id=job.job_id, epochs=epochs, version=version, metrics=scores)

    async def _maybe_checkpoint(self, job: Job, now: float) -> None:
        if (
            self.config.checkpoint_seconds <= 0
            or now - self._last_checkpoint < self.config.checkpoint_seconds
        ):
            return
        self._last_checkpoint = now
        n = self.params.num_shards
        if job.spec.options().consistency.mode != "sync":  # SYNC shards checkpoint at aligned steps
            results = await asyncio.gather(
                *(self.params.save_checkpoint(s, job.job_id) for s in range(n)), return_exceptions=True
            )
            failed = {s: str(r) for s, r in enumerate(results) if isinstance(r, BaseException)}
            if failed:
                log.warning("checkpoint failed on some shards", job_id=job.job_id, shards=failed)
        try:
            infos = await asyncio.gather(*(self.params.shard_info(s) for s in range(n)))
            manifest = build_manifest(job.job_id, infos)
        except MlmeshError as e:
            log.warning("no checkpoint manifest yet", job_id=job.job_id, error=e.message)
            return
        self.store.save_manifest(job.job_id, manifest)
        log.info(
            "checkpoint manifest", job_id=job.job_id, consistent=manifest["consistent"], step=manifest["step"]
        )

    async def _release_finished(self, now: float) -> None:
        """Free the state of every terminal job on the shards (DropJob), once per job, after its
        final export: each shard writes a final checkpoint and forgets the job. Forced: a
        terminal job's result is decided, so a late worker's joined lease or staged pushes
        cannot matter (its next call is told the job was dropped). A shard that cannot be
        reached is asked again `RELEASE_RETRY_SECONDS` later."""
        for job in self.list_jobs():
            if (
                not job.state.terminal
                or job.released
                or job.job_id in self._finalizing
                or job.job_id in self._exporting
                or self._release_after.get(job.job_id, 0.0) > now
            ):
                continue
            results = await asyncio.gather(
                *(self.params.drop_job(s, job.job_id, force=True) for s in range(self.params.num_shards)),
                return_exceptions=True,
            )
            failed = {s: str(r) for s, r in enumerate(results) if isinstance(r, BaseException)}
            if failed:
                self._release_after[job.job_id] = now + RELEASE_RETRY_SECONDS
                log.warning("job not yet released on every shard", job_id=job.job_id, shards=failed)
                continue
            self._release_after.pop(job.job_id, None)
            job.released = True
            self._save(job)
            log.info(
                "job released on the shards", job_id=job.job_id, dropped_now=sum(bool(r) for r in results)
            )

    # ----- finalization ----------------------------------------------------------------------

    def _begin_finalize(self, job: Job) -> None:
        task = asyncio.create_task(self._finalize(job), name=f"finalize-{job.job_id}")
        self._finalizing[job.job_id] = task
        task.add_done_callback(lambda _: self._finalizing.pop(job.job_id, None))

    async def _snapshot_export(self, job: Job, evaluate: bool) -> tuple[Path, int, dict[str, float]]:
        """Pull the model from the shards, evaluate it (optionally) and export it as the next
        version: (path, version, metrics)."""
        spec = job.spec
        tf = await self._tf.load()
        schema = (await self._dataset(spec.train_dataset, "train_dataset")).features
        async with self._tf_lock:
            ms = await asyncio.to_thread(tf["tfmodel"].build, spec)
            initial = tf["tfmodel"].variable_values(ms)
            values = await self._pull_all(job.job_id, initial, list(ms.sparse_variables))
            await asyncio.to_thread(tf["tfmodel"].assign_values, ms, values)
            specs = tf["tfmodel"].input_specs(ms, schema)
            scores: dict[str, float] = {}
            if evaluate:
                started = time.perf_counter()
                scores = await self._evaluate(tf["evaluate"], ms, specs, spec)
                metrics.EVAL_SECONDS.observe(time.perf_counter() - started)
            started = time.perf_counter()
            path, version = await asyncio.to_thread(
                tf["export"].export_saved_model, ms, specs, self.config.model_repo, spec.model_name
            )
            metrics.EXPORT_SECONDS.observe(time.perf_counter() - started)
        return path, version, scores

    async def _finalize(self, job: Job) -> None:
        """EVALUATING → EXPORTING → SUCCEEDED; any failure → FAILED. Stops quietly if cancelled."""
        try:
            if job.job_id in self._exporting:  # a continuous job's last version export
                await asyncio.gather(self._exporting[job.job_id], return_exceptions=True)
            if job.spec.exactly_once:
                # Every task is complete; wait (bounded) until the shards applied all of them.
                for _ in range(120):
                    if await self._settle_leases(job) == 0:
                        break
                    await asyncio.sleep(0.5)
            if job.state not in (JobState.EVALUATING, JobState.EXPORTING):
                return
            evaluate = job.state == JobState.EVALUATING
            path, version, scores = await self._snapshot_export(job, evaluate)
            if job.state == JobState.EVALUATING:
                job.eval_metrics = scores
                log.info("job evaluated", job_id=job.job_id, metrics=scores)
                self._transition(job, JobState.EXPORTING)
            if job.state != JobState.EXPORTING:
                log.warning(
                    "job cancelled during export; the export stays", job_id=job.job_id, path=str(path)
                )
                return
            self._transition(
                job,
                JobState.SUCCEEDED,
                export_path=str(path),
                model_version=version,
                epochs_exported=job.epochs_completed,
                finished_unix=time.time(),
            )
            log.info("job succeeded", job_id=job.job_id, export_path=str(path), version=version)
        except asyncio.CancelledError:
            raise
        except MlmeshError as e:
            self._fail(job, f"{job.state.value.lower()} failed: {e.message}")
        except Exception as e:
            log.exception("finalization failed", job_id=job.job_id)
            self._fail(job, f"{job.state.value.lower()} failed: {type(e).__name__}: {e}")

    async def _pull_all(
        self, job_id: str, like: dict[str, np.ndarray], sparse: list[str]
    ) -> dict[str, np.ndarray]:
        """Every variable whole, assembled from the shards (`like` gives names, shapes, dtypes).

        Where each dense variable lives comes from the shards themselves
        (`placement.read_layout`); partitioned ones are read by rows, like
        sparse tables, so no single request exceeds `request_bytes`.
        """
        n = self.params.num_shards
        values: dict[str, np.ndarray] = {}
        dense = [name for name in like if name not in sparse]
        layout = await placement.read_layout(self.params, job_id, dense, sparse)
        for shard, names in enumerate(layout.whole):
            for chunk in _chunk_names(names, like, self.config.request_bytes):
                big = sum(like[n].nbytes for n in chunk) >= tensor.STREAM_BYTES
                result = await self.params.pull(shard, job_id, chunk, {}, stream=big)
                for name in chunk:
                    if name not in result.dense:
                        raise FailedPrecondition(f"shard {shard} did not return variable {name!r}")
                    values[name] = np.asarray(result.dense[name])
        for name, rows_at in [*layout.sparse.items(), *layout.partitioned.items()]:
            full = np.zeros_like(like[name])
            row_bytes = max(1, full[:1].nbytes)
            rows_per_request = max(1, self.config.request_bytes // row_bytes)
            for shard in range(n):
                owned = rows_at.global_rows(shard)
                for start in range(0, len(owned), rows_per_request):
                    rows = owned[start : start + rows_per_request]
                    big = len(rows) * row_bytes >= tensor.STREAM_BYTES
                    result = await self.params.pull(shard, job_id, [], {name: rows}, stream=big)
                    got_rows, got = result.rows[name]
                    full[got_rows] = got
            values[name] = full
        return values

    async def _registered_layout(self, job_id: str) -> dict[str, placement.Registered]:
        """How the shards already hold the variables of `job_id` (empty for a new job)."""
        infos = await asyncio.gather(*(self.params.shard_info(s) for s in range(self.params.num_shards)))
        return {
            v.name: placement.Registered(v.row_sharded, -1 if v.row_sharded else shard)
            for shard, info in enumerate(infos)
            for v in info.variables
            if v.job_id == job_id
        }

    async def _evaluate(self, evaluate: ModuleType, ms: Any, specs: Any, spec: JobSpec) -> dict[str, float]:
        if not spec.eval_dataset:
            return {}
        evaluator = await asyncio.to_thread(evaluate.Evaluator, ms, specs, self.config.eval_batch_size)
        remaining = spec.eval_max_records or None
        for part in await self.ingest.list_partitions(spec.eval_dataset):
            if remaining is not None and remaining <= 0:
                break
            columns = await self.ingest.read_partition(spec.eval_dataset, part.partition_id)
            if remaining is not None:
                columns = {k: v[:remaining] for k, v in columns.items()}
                remaining -= len(next(iter(columns.values()), []))
            await asyncio.to_thread(evaluator.update, columns)
        return evaluator.result()

    # ----- helpers -------------------------------------------------------------------------

    def _existing(self, job_id: str, spec: JobSpec) -> Job | None:
        job = self.jobs.get(job_id)
        if job is None:
            return None
        if job.spec != spec:
            raise AlreadyExists(f"job {job_id!r} already exists with a different spec")
        return job

    async def _dataset(self, name: str, field: str) -> DatasetInfo:
        try:
            return await self.ingest.get_dataset(name)
        except NotFound:
            raise NotFound(f"{field} {name!r} does not exist in ingest ({self.config.ingest_addr})") from None
        except InvalidArgument as e:
            raise InvalidArgument(f"{field} {name!r}: {e.message}") from None

    def _running(self) -> Job | None:
        return next((j for j in self.jobs.values() if j.state == JobState.RUNNING), None)

    def _active_workers(self, job_id: str, now: float) -> int:
        horizon = now - self.config.worker_timeout_seconds
        return sum(1 for w in self._workers.values() if w.job_id == job_id and w.last_seen >= horizon)

    def _transition(self, job: Job, state: JobState, **fields: Any) -> None:
        for key, value in fields.items():
            setattr(job, key, value)
        job.state = state
        self._save(job)
        metrics.JOB_TRANSITIONS.labels(state.value).inc()
        self._update_gauges()
        log.info("job state", job_id=job.job_id, state=state.value)

    def _fail(self, job: Job, error: str) -> None:
        if job.state.terminal:
            return
        log.error("job failed", job_id=job.job_id, error=error)
        self._transition(job, JobState.FAILED, error=error, finished_unix=time.time())

    def _save(self, job: Job) -> None:
        self.store.save(job)
        self._dirty.discard(job.job_id)

    def _flush(self) -> None:
        for job_id in list(self._dirty):
            self._save(self.jobs[job_id])

    def _update_gauges(self) -> None:
        counts = dict.fromkeys(JobState, 0)
        for job in self.jobs.values():
            counts[job.state] += 1
        for state, count in counts.items():
            metrics.JOBS.labels(state.value).set(count)


def _chunk_names(names: list[str], like: dict[str, np.ndarray], max_bytes: int) -> list[list[str]]:
    chunks: list[list[str]] = []
    current: list[str] = []
    size = 0
    for name in names:
        n = like[name].nbytes
        if current and size + n > max_bytes:
            chunks.append(current)
            current, size = [], 0
        current.append(name)
        size += n
    if current:
        chunks.append(current)
    return chunks


def _epoch_seed(seed: int, epoch: int) -> int:
    """seed + epoch, wrapped into int64 (the proto field) instead of overflowing."""
    return (seed + epoch + 2**63) % 2**64 - 2**63
