"""One parameter-server shard: the glue between the servicer and the store.

Vocabulary (ps-lite's): `register`, `pull`, `push`, plus checkpoints.
Placement follows `mlmesh.keys`, so workers and shards agree by construction.

Thread-safety: every method may be called from any thread, concurrently.
A request's validation and effect happen under its job's lock, so a pull
never sees half a push, and a push is applied wholly or (on any bad input)
not at all. Methods block on NumPy work: call them from a thread pool, not
from the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlmesh import keys
from mlmesh.errors import FailedPrecondition, InvalidArgument, MlmeshError, NotFound
from mlmesh.logging import get_logger

from paramserver_svc.core import checkpoint, metrics
from paramserver_svc.core.consistency import Admission
from paramserver_svc.core.initializers import initial_value
from paramserver_svc.core.specs import (
    InitSpec,
    OptimizerConfig,
    VarSpec,
    check_job_id,
    describe_shape,
    local_shape,
)
from paramserver_svc.core.store import Job, Store, Variable

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


@dataclass(frozen=True)
class PushResult:
    applied: bool
    version: int


@dataclass(frozen=True)
class VariableInfo:
    job_id: str
    spec: VarSpec
    local_rows: int


@dataclass(frozen=True)
class _Update:
    var: Variable
    grad: np.ndarray
    idx: np.ndarray | None = None  # unique local rows; None = the whole variable


class Shard:
    def __init__(self, shard_index: int, num_shards: int, checkpoint_dir: Path) -> None:
        if not 0 <= shard_index < num_shards:
            raise ValueError(f"shard_index {shard_index} is outside 0..{num_shards - 1}")
        self.index = shard_index
        self.num_shards = num_shards
        self.checkpoint_dir = checkpoint_dir
        self.store = Store()

    # -- registration -------------------------------------------------------

    def register(
        self,
        job_id: str,
        variables: Sequence[tuple[VarSpec, InitSpec]],
        optimizer: OptimizerConfig | None,
    ) -> tuple[list[str], list[str]]:
        """Create the variables this request names that do not exist yet.

        Idempotent: a variable registered again with the same spec keeps its
        value and is reported in `existing`. All-or-nothing: on any error
        nothing is created. `optimizer` may be None only for a known job.
        Returns (created, existing) names.
        """
        check_job_id(job_id)
        names: set[str] = set()
        for spec, init in variables:
            spec.validate()
            init.validate(spec)
            if spec.name in names:
                raise InvalidArgument(f"variable {spec.name!r} appears twice in one request")
            names.add(spec.name)
            if not spec.row_sharded:
                owner = keys.dense_shard(spec.name, self.num_shards)
                if owner != self.index:
                    raise FailedPrecondition(
                        f"dense variable {spec.name!r} belongs on shard {owner} of {self.num_shards} "
                        f"(mlmesh.keys.dense_shard), not on shard {self.index}"
                    )
        job = self.store.find(job_id)
        if job is None:
            if optimizer is None:
                raise InvalidArgument(f"job {job_id!r} is new on this shard; its optimizer kind is required")
            fresh = Job(job_id, optimizer)
            with fresh.lock:
                created, existing = self._register_locked(fresh, variables)
            job = self.store.insert_if_absent(fresh)
            if job is fresh:
                self._update_gauges()
                log.info(
                    "job registered", job_id=job_id, optimizer=optimizer.describe(), created=len(created)
                )
                return created, existing
        # The job exists (possibly created by a concurrent request just now).
        with job.lock:
            if optimizer is not None and optimizer != job.optimizer:
                raise FailedPrecondition(
                    f"job {job_id!r} is registered with optimizer {job.optimizer.describe()}; "
                    f"got {optimizer.describe()}"
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

    # -- pull / push ----------------------------------------------------------

    def pull(self, job_id: str, dense: Sequence[str], rows: Sequence[RowValues]) -> PullResult:
        """Copies of the named variables and rows, all taken at one version.

        A dense name may also name a row-sharded variable: the answer is this
        shard's whole slice, in local order (row i is global row i*n + index).
        Rows come back in request order, duplicates included.
        """
        check_job_id(job_id)
        job = self.store.get(job_id)
        with job.lock:
            dense_vars = [(name, job.variable(name)) for name in dense]
            row_reqs = []
            for req in rows:
                var = job.variable(req.name)
                row_reqs.append((req, var, self._local_rows(job_id, var, req.rows)))
            out_dense = {name: var.value.copy() for name, var in dense_vars}
            out_rows = [RowValues(req.name, req.rows, var.value[local]) for req, var, local in row_reqs]
            version = job.version
        nbytes = sum(a.nbytes for a in out_dense.values()) + sum(r.values.nbytes for r in out_rows)  # type: ignore[union-attr]
        metrics.PULL_BYTES.inc(nbytes)
        return PullResult(out_dense, out_rows, version)

    def push(
        self,
        job_id: str,
        worker_id: str,
        step: int,
        dense: Mapping[str, np.ndarray],
        rows: Sequence[RowValues],
    ) -> PushResult:
        """Apply gradients with the job's update rule.

        Idempotent per (job, worker, step): a step not above the worker's last
        applied one is answered applied=False and changes nothing. Every
        gradient is validated (names, dtypes, shapes, row ownership, NaN/Inf)
        before any is applied. Duplicate row ids in one push are summed.
        """
        try:
            check_job_id(job_id)
            if not worker_id:
                raise InvalidArgument("worker_id is empty; pushes are deduplicated per (job, worker, step)")
            if step < 0:
                raise InvalidArgument(f"step must be >= 0, got {step}")
            job = self.store.get(job_id)
            started = time.perf_counter()
            with job.lock:
                updates = self._validate_push(job, dense, rows)
                if job.policy.admit(job.clocks, worker_id, step) is not Admission.APPLY:
                    metrics.PUSHES.labels("duplicate").inc()
                    return PushResult(False, job.version)
                for up in updates:
                    up.var.updates += 1
                    if up.idx is None:
                        job.rule.apply_dense(up.var.value, up.var.slots, up.grad, up.var.updates)
                    else:
                        job.rule.apply_rows(up.var.value, up.var.slots, up.idx, up.grad, up.var.updates)
                job.clocks.record(worker_id, step)
                job.version += 1
                job.generation += 1
                version = job.version
            metrics.APPLY_SECONDS.observe(time.perf_counter() - started)
        except MlmeshError:
            metrics.PUSHES.labels("rejected").inc()
            raise
        metrics.PUSHES.labels("applied").inc()
        metrics.PUSH_BYTES.inc(sum(up.grad.nbytes for up in updates))
        return PushResult(True, version)

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
            _check_finite(name, grad)
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
            _check_finite(rv.name, grad)
            by_name.setdefault(rv.name, []).append((local, grad))
        for name, parts in by_name.items():
            local = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
            grad = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
            idx, inverse = np.unique(local, return_inverse=True)
            if len(idx) < len(local):
                summed = np.zeros((len(idx), *grad.shape[1:]), dtype=grad.dtype)
                np.add.at(summed, inverse, grad)
                grad = summed
            else:
                idx = local  # already unique; keep the caller's order and skip a copy
            var = job.variables[name]
            if len(idx) == len(var.value) and np.array_equal(idx, np.arange(len(idx))):
                # Every local row in local order (a partitioned dense variable's push): the
                # same update as on rows, applied to the whole array without gather/scatter.
                updates.append(_Update(var, grad))
            else:
                updates.append(_Update(var, grad, idx))
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
        total, n = var.spec.shape[0], self.num_shards
        outside = (ids < 0) | (ids >= total)
        if outside.any():
            raise InvalidArgument(
                f"row id {int(ids[outside][0])} of variable {var.spec.name!r} is outside [0, {total})"
            )
        foreign = ids % n != self.index
        if foreign.any():
            r = int(ids[foreign][0])
            raise InvalidArgument(
                f"row id {r} of variable {var.spec.name!r} belongs on shard {r % n} "
                f"(row r lives on shard r % {n}), not on shard {self.index}"
            )
        return ids // n

    # -- checkpoints ------------------------------------------------------------

    def save(self, job_id: str) -> tuple[Path, int]:
        """Write the job's checkpoint atomically; returns (path, version saved)."""
        check_job_id(job_id)
        job = self.store.get(job_id)
        started = time.perf_counter()
        with job.save_lock:
            with job.lock:
                snap = job.snapshot()
            try:
                path = checkpoint.write_checkpoint(self.checkpoint_dir, snap, self.index, self.num_shards)
            except OSError as e:
                metrics.CHECKPOINTS.labels("save", "failed").inc()
                raise FailedPrecondition(f"cannot write checkpoint of job {job_id!r}: {e}") from e
            job.saved_generation = snap.generation
        metrics.CHECKPOINTS.labels("save", "ok").inc()
        metrics.CHECKPOINT_SECONDS.labels("save").observe(time.perf_counter() - started)
        log.info("checkpoint saved", job_id=job_id, path=str(path), version=snap.version)
        return path, snap.version

    def load(self, job_id: str) -> int:
        """Replace the job's state by its checkpoint; NotFound if there is none. Returns the version."""
        check_job_id(job_id)
        path = checkpoint.checkpoint_path(self.checkpoint_dir, job_id)
        if not path.is_file():
            raise NotFound(f"no checkpoint of job {job_id!r} in {self.checkpoint_dir}")
        return self._load_file(path, expected_job=job_id)

    def load_all(self) -> list[tuple[str, int]]:
        """Load every checkpoint in the checkpoint directory (a restarted shard resumes).

        Raises FailedPrecondition on an unreadable or foreign checkpoint.
        """
        loaded = []
        for path in checkpoint.list_checkpoints(self.checkpoint_dir):
            snap_version = self._load_file(path)
            loaded.append((path.name, snap_version))
        return loaded

    def _load_file(self, path: Path, expected_job: str | None = None) -> int:
        started = time.perf_counter()
        try:
            snap = checkpoint.read_checkpoint(path, self.index, self.num_shards)
        except FileNotFoundError:
            raise NotFound(f"no checkpoint at {path}") from None
        except MlmeshError:
            metrics.CHECKPOINTS.labels("load", "failed").inc()
            raise
        if expected_job is not None and snap.job_id != expected_job:
            raise FailedPrecondition(f"checkpoint {path} holds job {snap.job_id!r}, not {expected_job!r}")
        fresh = Job.from_snapshot(snap)
        job = self.store.insert_if_absent(fresh)
        if job is not fresh:
            with job.lock:
                job.restore(snap)
        self._update_gauges()
        metrics.CHECKPOINTS.labels("load", "ok").inc()
        metrics.CHECKPOINT_SECONDS.labels("load").observe(time.perf_counter() - started)
        log.info("checkpoint loaded", job_id=snap.job_id, path=str(path), version=snap.version)
        return snap.version

    def save_dirty(self) -> list[str]:
        """Checkpoint every job changed since its last checkpoint; returns their ids.

        A job that fails to save is logged and skipped (the others still save).
        """
        saved = []
        for job in self.store.jobs():
            if job.generation == job.saved_generation:
                continue
            try:
                self.save(job.job_id)
                saved.append(job.job_id)
            except MlmeshError as e:
                log.error("checkpoint failed", job_id=job.job_id, error=e.message)
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

    def _update_gauges(self) -> None:
        count = nbytes = 0
        for job in self.store.jobs():
            with job.lock:
                count += len(job.variables)
                nbytes += job.nbytes
        metrics.VARIABLES.set(count)
        metrics.BYTES_HELD.set(nbytes)


def _check_finite(name: str, grad: np.ndarray) -> None:
    if not np.isfinite(grad).all():
        raise InvalidArgument(
            f"gradient of variable {name!r} contains NaN or Inf; nothing of this push was applied"
        )
