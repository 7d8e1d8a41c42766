"""One parameter-server shard: the glue between the servicer and the store.

Vocabulary (ps-lite's): `register`, `join`/`leave`, `pull`, `push`, plus
checkpoints. Row placement follows `mlmesh.keys`, so workers and shards
agree by construction; when a pull may proceed and a push may apply is the
job's consistency model (`consistency.Clocks`).

Thread-safety: every method may be called from any thread, concurrently.
A request's validation and effect happen under its job's lock, so a pull
never sees half an update, and a push is applied wholly or (on any bad
input) not at all (a streamed dense push computes its new arrays off the
lock, as it arrives, and takes the lock only to validate and swap them in:
`core.streamed_push`). A pull's dense values are the variables' own arrays,
copy-on-write (`store.Variable`): an update never writes into an array a
pull returned, so the caller may read it after the lock is gone. Methods
block on NumPy work: call them from a thread pool, not from the event loop.
Nothing here blocks waiting for other workers: `pull` answers None when the
consistency model says "not yet", and the caller waits (asynchronously) and
asks again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mlmesh.errors import FailedPrecondition, InvalidArgument, MlmeshError, NotFound, ResourceExhausted
from mlmesh.logging import get_logger
from mlmesh.tensor import StreamLayout

from paramserver_svc.core import checkpoint, metrics
from paramserver_svc.core.consistency import Admission, Barrier
from paramserver_svc.core.finite import all_finite
from paramserver_svc.core.initializers import initial_value
from paramserver_svc.core.specs import (
    InitSpec,
    JobConfig,
    Mode,
    OptimizerConfig,
    VarSpec,
    check_job_id,
    describe_shape,
    local_shape,
)
from paramserver_svc.core.store import Job, JobSnapshot, Staged, Store, Variable
from paramserver_svc.core.streamed_push import StreamedPush

log = get_logger("paramserver_svc.shard")


@dataclass(frozen=True)
class RowValues:
    """Rows of a row-sharded variable by global id; `values` is [len(rows), *shape[1:]]
    (None in a pull request)."""

    name: str
    rows: np.ndarray
    values: np.ndarray | None = None


@dataclass(frozen=True)
class PullResult:
    dense: dict[str, np.ndarray]
    rows: list[RowValues]
    version: int
    clock: int = 0


@dataclass(frozen=True)
class PushResult:
    applied: bool
    version: int


@dataclass(frozen=True)
class DropResult:
    """dropped: freed now; already: dropped before (both False: the job was unknown here)."""

    dropped: bool
    already: bool
    checkpoint: Path | None = None
    version: int = 0


@dataclass(frozen=True)
class VariableInfo:
    job_id: str
    spec: VarSpec
    local_rows: int


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    config: JobConfig
    optimizer: OptimizerConfig
    clock: int
    version: int
    workers: dict[str, int]
    lost_steps: int
    checkpoints: list[checkpoint.CheckpointMeta]
    staged: list[StagedInfo] = field(default_factory=list)
    applied_by_task: dict[str, int] = field(default_factory=dict)
    leases_committed: int = 0
    leases_aborted: int = 0


@dataclass(frozen=True)
class StagedInfo:
    lease_id: str
    task_id: str
    worker_id: str
    pushes: int
    nbytes: int
    age_seconds: float


@dataclass
class _Prepared:
    """A push, validated under the job's lock: its updates, or an `install` that applies it
    (a streamed push, computed as it arrived); the first variable with NaN/Inf, if any."""

    updates: list[_Update]
    nonfinite: str | None
    nbytes: int = -1  # bytes of gradient (default: the updates')
    install: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        if self.nbytes < 0:
            self.nbytes = sum(u.grad.nbytes for u in self.updates)


@dataclass(frozen=True)
class _Update:
    var: Variable
    grad: np.ndarray
    idx: np.ndarray | None = None  # unique local rows; None = the whole variable


class Shard:
    def __init__(
        self,
        shard_index: int,
        num_shards: int,
        checkpoint_dir: Path,
        keep_checkpoints: int = 2,
        clock: Callable[[], float] = time.monotonic,
        sync_checkpoint_every: int = 0,
        max_staged_bytes: int = 1 << 30,
    ) -> None:
        if not 0 <= shard_index < num_shards:
            raise ValueError(f"shard_index {shard_index} is outside 0..{num_shards - 1}")
        self.index = shard_index
        self.num_shards = num_shards
        self.checkpoint_dir = checkpoint_dir
        self.keep_checkpoints = keep_checkpoints
        # SYNC jobs snapshot when their step reaches a multiple of this (0: off): every shard
        # then holds a checkpoint of the same step, a consistent cut across the shards.
        self.sync_checkpoint_every = sync_checkpoint_every
        # Exactly-once jobs: bytes of uncommitted pushes a job may hold on this shard.
        self.max_staged_bytes = max_staged_bytes
        self.now = clock  # leases are measured on this clock (a test may pass its own)
        self.store = Store()
        # Serialises DropJob against LoadCheckpoint of the same shard (both rare).
        self._drop_lock = threading.Lock()
        # Called with a job id (from whichever thread made the change, possibly under the
        # job's lock: must not block) when a waiting pull of that job may have become ready.
        self.listeners: list[Callable[[str], None]] = []

    def _changed(self, job_id: str) -> None:
        for listener in self.listeners:
            listener(job_id)

    def _expire(self, job: Job, now: float) -> None:
        for worker_id in job.clocks.expire(now):
            metrics.MEMBERSHIP.labels("expired").inc()
            log.warning("worker lease expired; it left the barrier", job_id=job.job_id, worker_id=worker_id)
            job.generation += 1

    # -- registration -------------------------------------------------------

    def register(
        self,
        job_id: str,
        variables: Sequence[tuple[VarSpec, InitSpec]],
        optimizer: OptimizerConfig | None,
        config: JobConfig | None = None,
    ) -> tuple[list[str], list[str]]:
        """Create the variables this request names that do not exist yet.

        Idempotent: a variable registered again with the same spec keeps its
        value and is reported in `existing`. All-or-nothing: on any error
        nothing is created. `optimizer` may be None only for a known job; a
        new job without `config` is asynchronous. Returns (created, existing) names.
        """
        check_job_id(job_id)
        names: set[str] = set()
        for spec, init in variables:
            spec.validate()
            init.validate(spec)
            if spec.name in names:
                raise InvalidArgument(f"variable {spec.name!r} appears twice in one request")
            names.add(spec.name)
        self.store.check_not_dropped(job_id)
        job = self.store.find(job_id)
        if job is None:
            if optimizer is None:
                raise InvalidArgument(f"job {job_id!r} is new on this shard; its optimizer kind is required")
            fresh = Job(job_id, optimizer, config or JobConfig())
            with fresh.lock:
                created, existing = self._register_locked(fresh, variables)
            job = self.store.insert_if_absent(fresh)
            if job is fresh:
                self._update_gauges()
                log.info(
                    "job registered",
                    job_id=job_id,
                    optimizer=optimizer.describe(),
                    consistency=fresh.config.describe(),
                    created=len(created),
                )
                return created, existing
        # The job exists (possibly created by a concurrent request just now).
        with job.lock:
            self._check_live(job)
            if optimizer is not None and optimizer != job.optimizer:
                raise FailedPrecondition(
                    f"job {job_id!r} is registered with optimizer {job.optimizer.describe()}; "
                    f"got {optimizer.describe()}"
                )
            if config is not None and config != job.config:
                raise FailedPrecondition(
                    f"job {job_id!r} is registered with consistency {job.config.describe()}; "
                    f"got {config.describe()}"
                )
            created, existing = self._register_locked(job, variables)
        if created:
            self._update_gauges()
            log.info("variables registered", job_id=job_id, created=len(created), existing=len(existing))
        return created, existing

    def _register_locked(
        self, job: Job, variables: Sequence[tuple[VarSpec, InitSpec]]
    ) -> tuple[list[str], list[str]]:
        created, existing = [], []
        new: list[tuple[VarSpec, np.ndarray]] = []
        for spec, init in variables:
            old = job.variables.get(spec.name)
            if old is not None:
                if old.spec != spec:
                    raise FailedPrecondition(
                        f"variable {spec.name!r} of job {job.job_id!r} is registered as "
                        f"{old.spec.describe()}; got {spec.describe()}"
                    )
                existing.append(spec.name)
                continue
            value = initial_value(spec, init, local_shape(spec, self.index, self.num_shards), self.index)
            new.append((spec, value))
        for spec, value in new:  # only once everything validated: all or nothing
            job.add(spec, value)
            created.append(spec.name)
        return created, existing

    # -- membership -----------------------------------------------------------

    def join(self, job_id: str, worker_id: str) -> tuple[int, JobConfig]:
        """Enter `worker_id` into the job's barrier; returns (its clock, the job's config)."""
        check_job_id(job_id)
        _check_worker(worker_id)
        job = self.store.get(job_id)
        with job.lock:
            self._check_live(job)
            clock = job.clocks.join(worker_id, self.now())
            job.generation += 1
        metrics.MEMBERSHIP.labels("joined").inc()
        log.info("worker joined", job_id=job_id, worker_id=worker_id, clock=clock)
        self._changed(job_id)
        return clock, job.config

    def leave(self, job_id: str, worker_id: str) -> None:
        """Take `worker_id` out of the barrier (a SYNC step waiting only for it completes)."""
        check_job_id(job_id)
        _check_worker(worker_id)
        job = self.store.get(job_id)
        with job.lock:
            self._check_live(job)
            if job.clocks.leave(worker_id):
                job.generation += 1
                metrics.MEMBERSHIP.labels("left").inc()
                log.info("worker left", job_id=job_id, worker_id=worker_id)
            self._advance(job)
        self._changed(job_id)

    # -- pull / push ----------------------------------------------------------

    def pull(
        self,
        job_id: str,
        dense: Sequence[str],
        rows: Sequence[RowValues],
        worker_id: str = "",
        clock: int = 0,
        pushed: int | None = None,
    ) -> PullResult | None:
        """The named variables (read-only arrays that no later update changes) and rows, all
        taken at one version; None when the job's consistency model says the worker at
        `clock` must wait (ask again later).

        An empty `worker_id` is an observer (the coordinator's evaluation): it never waits.
        `pushed` (default `clock`) is how many of the worker's steps were acknowledged.
        A dense name may also name a row-sharded variable: the answer is this shard's
        whole part, in local order. Rows come back in request order, duplicates included.
        """
        check_job_id(job_id)
        job = self.store.get(job_id)
        with job.lock:
            self._check_live(job)
            dense_vars = [(name, job.variable(name)) for name in dense]
            row_reqs = []
            for req in rows:
                var = job.variable(req.name)
                row_reqs.append((req, var, self._local_rows(job_id, var, req.rows)))
            if worker_id:
                now = self.now()
                self._expire(job, now)
                done = clock if pushed is None else pushed
                ready = job.clocks.pull_ready(worker_id, clock, done, now)
                if self._advance(job):
                    self._changed(job_id)
                    ready = job.clocks.pull_ready(worker_id, clock, done, now)
                if not ready:
                    return None
            out_dense = {name: var.read() for name, var in dense_vars}
            out_rows = [RowValues(req.name, req.rows, var.value[local]) for req, var, local in row_reqs]
            version = job.version
            answered = job.clocks.response_clock(worker_id)
        nbytes = sum(a.nbytes for a in out_dense.values()) + sum(r.values.nbytes for r in out_rows)  # type: ignore[union-attr]
        metrics.PULL_BYTES.inc(nbytes)
        return PullResult(out_dense, out_rows, version, answered)

    def push(
        self,
        job_id: str,
        worker_id: str,
        step: int,
        dense: Mapping[str, np.ndarray],
        rows: Sequence[RowValues],
        lease_id: str = "",
        task_id: str = "",
    ) -> PushResult:
        """Apply (ASYNC, BOUNDED) or buffer (SYNC) gradients with the job's update rule;
        in an exactly-once job, stage them under the task's lease until it commits.

        Idempotent per (job, worker, step): a step below the worker's clock is
        answered applied=False and changes nothing. Every gradient is validated
        (names, dtypes, shapes, row ownership, NaN/Inf) before any is applied.
        Duplicate row ids in one push are summed.
        """

        def prepare(job: Job) -> _Prepared:
            updates = self._validate_push(job, dense, rows)
            bad = next((u.var.spec.name for u in updates if not all_finite(u.grad)), None)
            return _Prepared(updates, bad)

        return self._push(job_id, worker_id, step, lease_id, task_id, prepare)

    def open_streamed_push(
        self,
        job_id: str,
        worker_id: str,
        step: int,
        layout: StreamLayout,
        lease_id: str = "",
        task_id: str = "",
    ) -> StreamedPush | None:
        """Start a push of dense gradients (`layout`: the stream's tensors) that is computed
        chunk by chunk as it arrives (`core.streamed_push`); None when this push does not fit
        that path (a SYNC or exactly-once job, an update rule that is not element-wise, or a
        tensor that does not match its variable): the caller then assembles the stream and
        calls `push`, which applies it or names what is wrong."""
        if lease_id or task_id or not worker_id or step < 0 or not layout.entries:
            return None
        job = self.store.find(job_id)
        if job is None:
            return None
        with job.lock:
            if (
                job.dropped
                or job.config.mode is Mode.SYNC
                or job.config.exactly_once
                or not job.rule.elementwise
            ):
                return None
            variables = []
            for name, dt, shape, _ in layout.entries:
                var = job.variables.get(name)
                if (
                    var is None
                    or not var.spec.is_floating
                    or var.spec.row_sharded
                    or var.value.dtype != dt
                    or var.value.shape != shape
                ):
                    return None
                variables.append(var)
            return StreamedPush(job, worker_id, step, layout, variables)

    def finish_streamed_push(self, streamed: StreamedPush) -> PushResult:
        """End a push begun by `open_streamed_push` once its stream has ended: apply it (all of
        it or, on any error, nothing) exactly as `push` would have applied the same gradients."""
        streamed.check_complete()

        def prepare(job: Job) -> _Prepared:
            if streamed.nonfinite is not None:
                return _Prepared([], streamed.nonfinite, streamed.nbytes)
            if streamed.current(job):
                return _Prepared([], None, streamed.nbytes, install=lambda: streamed.install(job))
            # Another update (or a checkpoint load) came first: the computed values are stale.
            # Rare; apply the received gradients the ordinary way.
            updates = self._validate_push(job, streamed.gradients(), [])
            return _Prepared(updates, None)

        return self._push(streamed.job_id, streamed.worker_id, streamed.step, "", "", prepare)

    def _push(
        self,
        job_id: str,
        worker_id: str,
        step: int,
        lease_id: str,
        task_id: str,
        prepare: Callable[[Job], _Prepared],
    ) -> PushResult:
        """The common part of every push: admission by the consistency model, then apply,
        buffer or stage what `prepare` validated (under the job's lock)."""
        try:
            check_job_id(job_id)
            _check_worker(worker_id)
            if step < 0:
                raise InvalidArgument(f"step must be >= 0, got {step}")
            job = self.store.get(job_id)
            started = time.perf_counter()
            with job.lock:
                self._check_live(job)
                if job.config.exactly_once:
                    self._check_stageable(job, lease_id, task_id)
                elif lease_id or task_id:
                    raise InvalidArgument(
                        f"job {job_id!r} is not exactly-once; its pushes carry no lease_id or task_id"
                    )
                prepared = prepare(job)
                updates, bad = prepared.updates, prepared.nonfinite
                if bad is not None and not job.config.skip_nonfinite:
                    raise InvalidArgument(
                        f"gradient of variable {bad!r} contains NaN or Inf; nothing of this push was applied"
                    )
                now = self.now()
                self._expire(job, now)
                admission = job.clocks.admit(worker_id, step, now)
                job.generation += 1
                if admission is Admission.DUPLICATE:
                    metrics.PUSHES.labels("duplicate").inc()
                    return PushResult(False, job.version)
                if bad is not None:
                    if admission is Admission.BUFFER:
                        job.clocks.barrier.mark(worker_id)
                        self._advance(job)
                    self._changed(job_id)
                    metrics.PUSHES.labels("nonfinite_skipped").inc()
                    log.warning(
                        "non-finite push skipped", job_id=job_id, worker_id=worker_id, step=step, variable=bad
                    )
                    return PushResult(False, job.version)
                if prepared.install is not None:  # computed as it arrived; only ASYNC/BOUNDED
                    assert admission is Admission.APPLY and not job.config.exactly_once
                    prepared.install()
                elif not updates:  # a clock tick: the worker's step had nothing to push here
                    if admission is Admission.BUFFER:
                        job.clocks.barrier.mark(worker_id)
                        self._advance(job)
                elif admission is Admission.BUFFER:
                    job.clocks.barrier.add(
                        worker_id,
                        {u.var.spec.name: u.grad for u in updates if u.idx is None},
                        {u.var.spec.name: (u.idx, u.grad) for u in updates if u.idx is not None},
                    )
                    self._advance(job)
                elif job.config.exactly_once:
                    self._stage(job, lease_id, task_id, worker_id, updates, now)
                else:
                    self._apply(job, updates)
                version = job.version
            metrics.APPLY_SECONDS.observe(time.perf_counter() - started)
            self._changed(job_id)
        except MlmeshError:
            metrics.PUSHES.labels("rejected").inc()
            raise
        staged = job.config.exactly_once or admission is not Admission.APPLY
        metrics.PUSHES.labels("buffered" if staged else "applied").inc()
        metrics.PUSH_BYTES.inc(prepared.nbytes)
        return PushResult(True, version)

    # -- exactly-once: pushes staged per task lease --------------------------------

    def _check_stageable(self, job: Job, lease_id: str, task_id: str) -> None:
        if not lease_id or not task_id:
            raise InvalidArgument(
                f"job {job.job_id!r} is exactly-once: every push names its task's lease_id and task_id"
            )
        settled = job.ledger.settled.get(lease_id)
        if settled is not None:
            raise FailedPrecondition(
                f"lease {lease_id!r} was {settled} on this shard; no more pushes are taken for it"
            )
        staged = job.staged.get(lease_id)
        if staged is not None and staged.task_id != task_id:
            raise InvalidArgument(f"lease {lease_id!r} is for task {staged.task_id!r}, not {task_id!r}")

    def _stage(
        self, job: Job, lease_id: str, task_id: str, worker_id: str, updates: list[_Update], now: float
    ) -> None:
        held = sum(s.nbytes for s in job.staged.values())
        nbytes = sum(u.grad.nbytes for u in updates)
        if held + nbytes > self.max_staged_bytes:
            raise ResourceExhausted(
                f"job {job.job_id!r} has {held} bytes of pushes staged for uncommitted leases; this push "
                f"of {nbytes} would pass the shard's limit of {self.max_staged_bytes} (--max-staged-bytes)"
            )
        staged = job.staged.setdefault(lease_id, Staged(task_id, worker_id, now))
        staged.pushes.append(updates)
        staged.nbytes += nbytes

    def commit_lease(self, job_id: str, lease_id: str, task_id: str) -> tuple[int, bool, int]:
        """Apply the lease's staged pushes in order, once: (pushes applied, was it committed
        already, version). Call only after ingest completed the lease's task."""
        check_job_id(job_id)
        if not lease_id or not task_id:
            raise InvalidArgument("CommitLease needs lease_id and task_id")
        job = self.store.get(job_id)
        with job.lock:
            self._check_live(job)
            if not job.config.exactly_once:
                raise FailedPrecondition(f"job {job_id!r} is not exactly-once; it stages no pushes")
            ledger = job.ledger
            settled = ledger.settled.get(lease_id)
            if settled == "committed":
                return 0, True, job.version
            if settled == "aborted":
                raise FailedPrecondition(f"lease {lease_id!r} was aborted on this shard; it cannot commit")
            winner = ledger.lease_of_task.get(task_id)
            if winner is not None:
                raise FailedPrecondition(
                    f"task {task_id!r} was already committed by lease {winner!r}; lease {lease_id!r} cannot "
                    "commit it again"
                )
            staged = job.staged.pop(lease_id, None)
            if staged is not None and staged.task_id != task_id:
                job.staged[lease_id] = staged
                raise InvalidArgument(f"lease {lease_id!r} is for task {staged.task_id!r}, not {task_id!r}")
            pushes = staged.pushes if staged is not None else []
            for updates in pushes:
                self._apply(job, updates)
            ledger.settled[lease_id] = "committed"
            ledger.lease_of_task[task_id] = lease_id
            ledger.applied_by_task[task_id] = len(pushes)
            job.generation += 1
            version = job.version
        metrics.LEASES.labels("committed").inc()
        self._changed(job_id)
        return len(pushes), False, version

    def abort_lease(self, job_id: str, lease_id: str) -> int:
        """Discard the lease's staged pushes (its task went back to the queue); the pushes
        dropped. Idempotent; a committed lease cannot be aborted."""
        check_job_id(job_id)
        if not lease_id:
            raise InvalidArgument("AbortLease needs lease_id")
        job = self.store.get(job_id)
        with job.lock:
            self._check_live(job)
            settled = job.ledger.settled.get(lease_id)
            if settled == "committed":
                raise FailedPrecondition(f"lease {lease_id!r} was committed on this shard; it cannot abort")
            staged = job.staged.pop(lease_id, None)
            job.ledger.settled[lease_id] = "aborted"
            job.generation += 1
        n = len(staged.pushes) if staged is not None else 0
        if settled is None:
            metrics.LEASES.labels("aborted").inc()
        return n

    def _apply(self, job: Job, updates: Sequence[_Update]) -> None:
        """One update of the job's variables (lock held)."""
        for up in updates:
            up.var.updates += 1
            if up.idx is None:
                up.var.replace(job.rule.apply_dense(up.var.value, up.var.slots, up.grad, up.var.updates))
            else:
                job.rule.apply_rows(up.var.writable(), up.var.slots, up.idx, up.grad, up.var.updates)
        job.version += 1
        job.generation += 1

    def _advance(self, job: Job) -> bool:
        """SYNC: apply every step that is complete, each as one update of the mean gradient.

        Returns whether any step was taken. Lock held.
        """
        advanced = False
        while job.clocks.step_complete():
            barrier = job.clocks.take()
            if barrier.contributors:
                self._apply(job, _mean_updates(job, barrier))
            metrics.SYNC_STEPS.labels("applied" if barrier.contributors else "empty").inc()
            job.generation += 1
            advanced = True
            every = self.sync_checkpoint_every
            if every and job.clocks.clock % every == 0:
                job.pending_snapshot = job.snapshot()  # written by the next save_due, off the lock
        return advanced

    def _validate_push(
        self, job: Job, dense: Mapping[str, np.ndarray], rows: Sequence[RowValues]
    ) -> list[_Update]:
        updates: list[_Update] = []
        for name, grad in dense.items():
            var = self._trainable(job, name)
            if var.spec.row_sharded:
                raise InvalidArgument(
                    f"variable {name!r} is row-sharded; push its gradient as rows in row_grads"
                )
            if grad.dtype != var.value.dtype or grad.shape != var.value.shape:
                raise InvalidArgument(
                    f"gradient {name!r} is {describe_shape(grad.dtype, grad.shape)} but variable {name!r} "
                    f"is {describe_shape(var.value.dtype, var.value.shape)}"
                )
            updates.append(_Update(var, grad))
        by_name: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        for rv in rows:
            var = self._trainable(job, rv.name)
            if not var.spec.row_sharded:
                raise InvalidArgument(f"variable {rv.name!r} is dense; push its gradient in dense_grads")
            grad = rv.values
            expected = (len(rv.rows), *var.spec.shape[1:])
            if grad is None or grad.dtype != var.value.dtype or grad.shape != expected:
                got = "nothing" if grad is None else describe_shape(grad.dtype, grad.shape)
                raise InvalidArgument(
                    f"row gradient {rv.name!r} is {got} but {len(rv.rows)} rows of it need "
                    f"{describe_shape(var.value.dtype, expected)}"
                )
            local = self._local_rows(job.job_id, var, rv.rows)
            by_name.setdefault(rv.name, []).append((local, grad))
        for name, parts in by_name.items():
            updates.append(_row_update(job.variables[name], parts))
        return updates

    def _trainable(self, job: Job, name: str) -> Variable:
        var = job.variable(name)
        if not var.spec.is_floating:
            raise InvalidArgument(
                f"variable {name!r} is {var.spec.dtype.name}; only floating variables take gradients"
            )
        return var

    def _local_rows(self, job_id: str, var: Variable, ids: np.ndarray) -> np.ndarray:
        """Local indices of global row ids this shard owns; InvalidArgument names the first bad id."""
        if not var.spec.row_sharded:
            raise InvalidArgument(
                f"variable {var.spec.name!r} is dense; it has no rows to address (pull it by name)"
            )
        total = var.spec.shape[0]
        outside = (ids < 0) | (ids >= total)
        if outside.any():
            raise InvalidArgument(
                f"row id {int(ids[outside][0])} of variable {var.spec.name!r} is outside [0, {total})"
            )
        placement = var.spec.placement(self.num_shards)
        owners = placement.owner(ids)
        foreign = owners != self.index
        if foreign.any():
            r = int(ids[foreign][0])
            raise InvalidArgument(
                f"row id {r} of variable {var.spec.name!r} belongs on shard {int(owners[foreign][0])} "
                f"({var.spec.layout.value} layout, mlmesh.keys), not on shard {self.index}"
            )
        return placement.local(ids)

    # -- dropping a finished job -------------------------------------------------

    def drop(self, job_id: str, force: bool = False) -> DropResult:
        """Free the job's state on this shard (values, slots, clocks, SYNC buffers, staged
        pushes) after writing a final checkpoint, which stays on disk: a restarted shard does
        not load it back (a marker file says the job was dropped), `load` does.

        Idempotent: an unknown or already dropped job is answered dropped=False. Without
        `force`, a job with live (joined, lease not expired) workers or staged pushes is
        FailedPrecondition; `force` drops it anyway (their later calls get NotFound).
        FailedPrecondition too if the checkpoint cannot be written (then nothing changes).
        """
        check_job_id(job_id)
        with self._drop_lock:
            job = self.store.find(job_id)
            if job is None:
                return DropResult(False, self.store.is_dropped(job_id))
            with job.lock:
                self._check_live(job)
                now = self.now()
                self._expire(job, now)
                live = sorted(job.clocks.live())
                if live and not force:
                    shown = ", ".join(repr(w) for w in live[:5]) + (" ..." if len(live) > 5 else "")
                    raise FailedPrecondition(
                        f"job {job_id!r} still has {len(live)} joined worker(s) on this shard ({shown}); "
                        "they must LeaveJob (or their lease run out) before DropJob, or pass force"
                    )
                if job.staged and not force:
                    raise FailedPrecondition(
                        f"job {job_id!r} has pushes staged under {len(job.staged)} uncommitted lease(s) "
                        "on this shard; commit or abort them before DropJob, or pass force"
                    )
                job.dropped = True  # from here on every call that reaches the job is refused
                snap = job.snapshot()
                staged = len(job.staged)
            try:
                path = self._write(job, snap)
                checkpoint.write_dropped_marker(self.checkpoint_dir, job_id)
            except (FailedPrecondition, OSError) as e:
                with job.lock:
                    job.dropped = False
                message = e.message if isinstance(e, FailedPrecondition) else str(e)
                raise FailedPrecondition(f"job {job_id!r} was not dropped: {message}") from e
            self.store.remove(job_id)
        self._changed(job_id)  # waiting pulls wake and learn it is gone
        self._update_gauges()
        metrics.JOBS_DROPPED.inc()
        log.info(
            "job dropped",
            job_id=job_id,
            checkpoint=str(path),
            version=snap.version,
            forced_workers=live,
            discarded_leases=staged,
        )
        return DropResult(True, False, path, snap.version)

    def dropped_jobs(self) -> list[str]:
        """Jobs dropped and not loaded back, by id."""
        return self.store.dropped()

    def _check_live(self, job: Job) -> None:
        """NotFound if the job was dropped after the caller found it (lock held)."""
        if job.dropped:
            raise NotFound(self.store.dropped_message(job.job_id))

    # -- checkpoints ------------------------------------------------------------

    def save(self, job_id: str) -> tuple[Path, int]:
        """Write a new checkpoint of the job atomically; returns (path, version saved)."""
        check_job_id(job_id)
        job = self.store.get(job_id)
        started = time.perf_counter()
        with job.lock:
            self._check_live(job)
            snap = job.snapshot()
        path = self._write(job, snap)
        metrics.CHECKPOINT_SECONDS.labels("save").observe(time.perf_counter() - started)
        return path, snap.version

    def _write(self, job: Job, snap: JobSnapshot) -> Path:
        with job.save_lock:
            if snap.generation < job.saved_generation:
                # A newer snapshot is already on disk; writing this one would replace it.
                return checkpoint.job_checkpoints(self.checkpoint_dir, job.job_id)[0]
            try:
                path = checkpoint.write_checkpoint(
                    self.checkpoint_dir, snap, self.index, self.num_shards, self.keep_checkpoints
                )
            except OSError as e:
                metrics.CHECKPOINTS.labels("save", "failed").inc()
                raise FailedPrecondition(f"cannot write checkpoint of job {job.job_id!r}: {e}") from e
            job.saved_generation = snap.generation
            job.saved_version = snap.version
            job.saved_at = self.now()
        metrics.CHECKPOINTS.labels("save", "ok").inc()
        log.info(
            "checkpoint saved",
            job_id=job.job_id,
            path=str(path),
            version=snap.version,
            clock=snap.clocks.clock,
        )
        return path

    def load(self, job_id: str) -> int:
        """Replace the job's state by its newest usable checkpoint; returns the version.

        NotFound if it has none; FailedPrecondition (naming every reason) if none is usable.
        """
        check_job_id(job_id)
        paths = checkpoint.job_checkpoints(self.checkpoint_dir, job_id)
        if not paths:
            raise NotFound(f"no checkpoint of job {job_id!r} in {self.checkpoint_dir}")
        with self._drop_lock:
            version = self._load(paths, job_id)
            if self.store.undrop(job_id):  # an explicit load brings a dropped job back
                checkpoint.remove_dropped_marker(self.checkpoint_dir, job_id)
                log.info("dropped job loaded back", job_id=job_id, version=version)
        return version

    def load_all(self) -> list[tuple[str, int]]:
        """Load the newest usable checkpoint of every job in the directory (a restarted shard resumes).

        Returns (file name, version) per job. FailedPrecondition when some job has
        checkpoints but none usable: resuming without it would silently lose its training.
        """
        loaded, failed = [], []
        dropped = checkpoint.dropped_jobs(self.checkpoint_dir)
        for stem in dropped:
            self.store.mark_dropped(dropped[stem])
        for stem, paths in checkpoint.list_checkpoints(self.checkpoint_dir).items():
            if stem in dropped:  # finished and released (DropJob): stays on disk, not in memory
                continue
            try:
                version = self._load(paths, None)
            except FailedPrecondition as e:
                failed.append(e.message)
                continue
            loaded.append((paths[0].name, version))
        if failed:
            raise FailedPrecondition("; ".join(failed))
        return loaded

    def _load(self, paths: list[Path], job_id: str | None) -> int:
        started = time.perf_counter()
        try:
            snap, path, refused = checkpoint.read_newest(paths, job_id, self.index, self.num_shards)
        except FailedPrecondition:
            metrics.CHECKPOINTS.labels("load", "failed").inc()
            raise
        for reason in refused:
            metrics.CHECKPOINTS.labels("load", "refused").inc()
            log.error("checkpoint refused; trying the previous one", reason=reason)
        fresh = Job.from_snapshot(snap, self.now())
        job = self.store.insert_if_absent(fresh)
        if job is not fresh:
            with job.lock:
                job.restore(snap, self.now())
        self._update_gauges()
        metrics.CHECKPOINTS.labels("load", "ok").inc()
        metrics.CHECKPOINT_SECONDS.labels("load").observe(time.perf_counter() - started)
        log.info(
            "checkpoint loaded",
            job_id=snap.job_id,
            path=str(path),
            version=snap.version,
            clock=snap.clocks.clock,
            workers=snap.clocks.live,
        )
        return snap.version

    def save_due(self, every_seconds: float, every_steps: int) -> list[str]:
        """Checkpoint every job that changed and is due: `every_seconds` since its last
        checkpoint (0: never by time) or `every_steps` updates applied since (0: never by steps)."""
        now = self.now()
        due = []
        for job in self.store.jobs():
            with job.lock:
                aligned, job.pending_snapshot = job.pending_snapshot, None
            if aligned is not None:
                self._write(job, aligned)
                continue
            if job.generation == job.saved_generation:
                continue
            by_time = every_seconds > 0 and now - job.saved_at >= every_seconds
            # SYNC jobs checkpoint at aligned steps instead (above), the same on every shard.
            by_steps = (
                every_steps > 0
                and not (self.sync_checkpoint_every and job.config.mode is Mode.SYNC)
                and job.version - job.saved_version >= every_steps
            )
            if by_time or by_steps:
                due.append(job.job_id)
        return self._save_each(due)

    def save_dirty(self) -> list[str]:
        """Checkpoint every job changed since its last checkpoint; returns their ids.

        A job that fails to save is logged and skipped (the others still save).
        """
        return self._save_each([j.job_id for j in self.store.jobs() if j.generation != j.saved_generation])

    def _save_each(self, job_ids: list[str]) -> list[str]:
        saved = []
        for job_id in job_ids:
            try:
                self.save(job_id)
                saved.append(job_id)
            except NotFound:
                continue  # dropped meanwhile (DropJob wrote its final checkpoint)
            except MlmeshError as e:
                log.error("checkpoint failed", job_id=job_id, error=e.message)
        return saved

    # -- introspection ----------------------------------------------------------

    def info(self) -> list[VariableInfo]:
        out = []
        for job in sorted(self.store.jobs(), key=lambda j: j.job_id):
            with job.lock:
                for name in sorted(job.variables):
                    var = job.variables[name]
                    rows = var.value.shape[0] if var.value.ndim else 1
                    out.append(VariableInfo(job.job_id, var.spec, int(rows)))
        return out

    def jobs_info(self) -> list[JobInfo]:
        out = []
        for job in sorted(self.store.jobs(), key=lambda j: j.job_id):
            with job.lock:
                c = job.clocks
                self._expire(job, self.now())
                clock = c.clock if job.config.mode is Mode.SYNC else (c.slowest() or 0)
                workers = {w: c.next.get(w, 0) for w in c.live()}
                info = (job.job_id, job.config, job.optimizer, clock, job.version, workers, c.lost_steps)
                now = self.now()
                staged = [
                    StagedInfo(lease, s.task_id, s.worker_id, len(s.pushes), s.nbytes, now - s.since)
                    for lease, s in job.staged.items()
                ]
                ledger = job.ledger
                settled = list(ledger.settled.values())
                extra = (
                    staged,
                    dict(ledger.applied_by_task),
                    settled.count("committed"),
                    settled.count("aborted"),
                )
            metas = [
                checkpoint.describe(p) for p in checkpoint.job_checkpoints(self.checkpoint_dir, job.job_id)
            ]
            out.append(JobInfo(*info, [m for m in metas if m is not None], *extra))
        return out

    def _update_gauges(self) -> None:
        count = nbytes = 0
        for job in self.store.jobs():
            with job.lock:
                count += len(job.variables)
                nbytes += job.nbytes
        metrics.VARIABLES.set(count)
        metrics.BYTES_HELD.set(nbytes)


def _check_worker(worker_id: str) -> None:
    if not worker_id:
        raise InvalidArgument("worker_id is empty; clocks and pushes are kept per (job, worker)")
    if len(worker_id) > 1024:
        raise InvalidArgument(f"worker_id has {len(worker_id)} characters; at most 1024 allowed")


def _row_update(var: Variable, parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> _Update:
    """One update from (local ids, gradient rows) parts: duplicate ids summed."""
    local = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    grad = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    idx, inverse = np.unique(local, return_inverse=True)
    if len(idx) < len(local):
        summed = np.zeros((len(idx), *grad.shape[1:]), dtype=grad.dtype)
        np.add.at(summed, inverse, grad)
        grad = summed
    else:
        idx = local  # already unique; keep the caller's order and skip a copy
    if len(idx) == len(var.value) and np.array_equal(idx, np.arange(len(idx))):
        # Every local row in local order (a partitioned dense variable's push): the
        # same update as on rows, applied to the whole array without gather/scatter.
        return _Update(var, grad)
    return _Update(var, grad, idx)


def _mean_updates(job: Job, barrier: Barrier) -> list[_Update]:
    """SYNC: the step's updates, each the mean over the workers that pushed data.

    A row absent from a worker's push counts as a zero gradient from it, so the
    result is the gradient of the mean loss over the step's whole global batch.
    """
    scale = 1.0 / barrier.contributors
    dense = dict(barrier.dense)
    out: list[_Update] = []
    for name, parts in barrier.rows.items():
        var = job.variables[name]
        if name in dense:  # some workers pushed every row, others a few: fold the few in
            for idx, grad in parts:
                np.add.at(dense[name], idx, grad)
            continue
        up = _row_update(var, parts)
        out.append(_Update(var, up.grad * np.asarray(scale, dtype=up.grad.dtype), up.idx))
    for name, total in dense.items():
        total *= np.asarray(scale, dtype=total.dtype)
        out.append(_Update(job.variables[name], total))
    return out
