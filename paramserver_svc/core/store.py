"""The arrays a shard holds, per job.

Ownership and locking: the `Store` owns its jobs; its map is guarded by its
own lock. Each `Job` owns its variables, slots, clocks and counters, all
guarded by `Job.lock`: whoever reads or writes them holds it, so a pull sees
a push either wholly applied or not at all.

Values are copy-on-write (`Variable.read`, `Variable.writable`): a pull or a
snapshot takes the value array itself, not a copy, and reads it after the
lock is released; an array once handed out is never written again.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from mlmesh.errors import FailedPrecondition, NotFound

from paramserver_svc.core.consistency import Barrier, Clocks, ClockState
from paramserver_svc.core.specs import JobConfig, OptimizerConfig, VarSpec
from paramserver_svc.core.update_rules import Slots, UpdateRule, make_rule


@dataclass
class Variable:
    """This shard's part of one variable: all of a dense one, the owned rows
    (in local order, global row r at r // num_shards) of a row-sharded one.

    `value` is replaced, not written, by a whole-array update (`replace`), so
    readers holding the old array keep a consistent copy at no cost; a row
    update writes in place, into `writable()`. Slots are private: always
    written in place, copied by snapshots. Call every method with the job's
    lock held.
    """

    spec: VarSpec
    value: np.ndarray
    slots: Slots
    # Updates applied to this variable: Adam's bias-correction step.
    updates: int = 0
    # Whether `value` may be held by a reader (a pull answer, a snapshot): then it must
    # never be written again.
    shared: bool = False

    def read(self) -> np.ndarray:
        """The value, read-only, valid after the lock is released: later updates never
        change it (they replace it, or copy it before writing)."""
        self.shared = True
        view = self.value.view()
        view.flags.writeable = False
        return view

    def replace(self, value: np.ndarray) -> None:
        """Make `value` (a new array nobody else holds) the current value."""
        self.value = value
        self.shared = False

    def writable(self) -> np.ndarray:
        """The value, to be written in place: copied first if a reader may hold it."""
        if self.shared:
            self.replace(self.value.copy())
        return self.value

    @property
    def nbytes(self) -> int:
        return int(self.value.nbytes + sum(s.nbytes for s in self.slots.values()))


@dataclass
class Ledger:
    """Exactly-once jobs: what became of each task lease on this shard (checkpointed, so a
    restored shard still refuses a second commit of a task)."""

    applied_by_task: dict[str, int] = field(default_factory=dict)  # task id -> pushes applied
    lease_of_task: dict[str, str] = field(default_factory=dict)  # task id -> the lease that won
    settled: dict[str, str] = field(default_factory=dict)  # lease id -> "committed" | "aborted"

    def copy(self) -> Ledger:
        return Ledger(dict(self.applied_by_task), dict(self.lease_of_task), dict(self.settled))


@dataclass
class Staged:
    """One lease's pushes, validated, waiting for its commit (not checkpointed: a shard that
    restarts loses them, and their commit then finds nothing to apply)."""

    task_id: str
    worker_id: str
    since: float
    pushes: list[list[Any]] = field(default_factory=list)  # each push's updates, in order
    nbytes: int = 0


@dataclass
class JobSnapshot:
    """A consistent copy of a job's state (what a checkpoint holds)."""

    job_id: str
    optimizer: OptimizerConfig
    config: JobConfig
    version: int
    clocks: ClockState
    variables: list[Variable]
    barrier: Barrier = field(default_factory=Barrier)
    generation: int = 0
    ledger: Ledger = field(default_factory=Ledger)


@dataclass(eq=False)
class Job:
    """One job's state on this shard. Fields are guarded by `lock`."""

    job_id: str
    optimizer: OptimizerConfig
    config: JobConfig = field(default_factory=JobConfig)
    variables: dict[str, Variable] = field(default_factory=dict)
    # Updates applied (answered to clients as the job's version).
    version: int = 0
    # Bumped by every change; a checkpoint is due when it differs from saved_generation.
    generation: int = 0
    saved_generation: int = -1
    saved_version: int = 0  # version and time (the shard's clock) of the last checkpoint
    saved_at: float = 0.0
    # A snapshot taken at an aligned SYNC step, waiting to be written (see Shard._advance).
    pending_snapshot: JobSnapshot | None = field(default=None, repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # Serialises checkpoint writes of this job so an older snapshot never replaces a newer one.
    save_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # Exactly-once jobs: pushes waiting for their lease's commit, and the settled leases.
    staged: dict[str, Staged] = field(default_factory=dict, repr=False)
    ledger: Ledger = field(default_factory=Ledger, repr=False)
    # Set (under the lock) by DropJob: whoever found the job before it left the store
    # must not change it any more.
    dropped: bool = False

    def __post_init__(self) -> None:
        self.rule: UpdateRule = make_rule(self.optimizer)
        self.clocks = Clocks(self.config)

    def variable(self, name: str) -> Variable:
        try:
            return self.variables[name]
        except KeyError:
            raise NotFound(f"job {self.job_id!r} has no variable {name!r} on this shard") from None

    def add(self, spec: VarSpec, value: np.ndarray) -> None:
        slots = self.rule.init_slots(value) if spec.is_floating else {}
        self.variables[spec.name] = Variable(spec, value, slots)
        self.generation += 1

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.variables.values())

    def snapshot(self) -> JobSnapshot:
        """A copy that later changes of the job do not touch (values shared copy-on-write,
        everything else copied); call with the lock held."""
        b = self.clocks.barrier
        return JobSnapshot(
            job_id=self.job_id,
            optimizer=self.optimizer,
            config=self.config,
            version=self.version,
            clocks=self.clocks.state(),
            variables=[
                Variable(v.spec, v.read(), {k: s.copy() for k, s in v.slots.items()}, v.updates, shared=True)
                for v in self.variables.values()
            ],
            barrier=Barrier(
                {k: a.copy() for k, a in b.dense.items()},
                {k: list(parts) for k, parts in b.rows.items()},  # parts are never mutated
                set(b.workers),
                b.contributors,
            ),
            generation=self.generation,
            ledger=self.ledger.copy(),
        )

    def restore(self, snap: JobSnapshot, now: float) -> None:
        """Replace all state by the snapshot's (which the job takes ownership of); call with the lock held.

        The workers that were live get a fresh lease from `now`.
        """
        self.optimizer = snap.optimizer
        self.config = snap.config
        self.rule = make_rule(snap.optimizer)
        self.variables = {v.spec.name: v for v in snap.variables}
        self.clocks = Clocks(snap.config, snap.clocks, now)
        self.clocks.barrier = snap.barrier
        self.version = snap.version
        self.ledger = snap.ledger
        self.staged = {}
        self.generation += 1
        self.saved_generation = self.generation
        self.saved_version = snap.version
        self.saved_at = now

    @classmethod
    def from_snapshot(cls, snap: JobSnapshot, now: float) -> Job:
        job = cls(snap.job_id, snap.optimizer, snap.config)
        job.restore(snap, now)
        return job


class Store:
    """Jobs by id. Thread-safe."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        # Ids of the jobs dropped (DropJob) and not loaded back: a few bytes each, kept so a
        # late call is told what became of its job.
        self._dropped: set[str] = set()
        self._lock = threading.Lock()

    def get(self, job_id: str) -> Job:
        job = self.find(job_id)
        if job is None:
            if self.is_dropped(job_id):
                raise NotFound(self.dropped_message(job_id))
            raise NotFound(f"job {job_id!r} is not registered on this shard")
        return job

    @staticmethod
    def dropped_message(job_id: str) -> str:
        return (
            f"job {job_id!r} was dropped from this shard (DropJob: it finished); its final checkpoint "
            "stays on disk and LoadCheckpoint brings it back"
        )

    def check_not_dropped(self, job_id: str) -> None:
        """FailedPrecondition for a dropped job: registering it anew would silently restart it."""
        if self.is_dropped(job_id):
            raise FailedPrecondition(
                f"job {job_id!r} was dropped from this shard (DropJob: it finished); it cannot be "
                "registered again under that id (LoadCheckpoint brings it back)"
            )

    def is_dropped(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._dropped

    def mark_dropped(self, job_id: str) -> None:
        with self._lock:
            self._dropped.add(job_id)

    def undrop(self, job_id: str) -> bool:
        """Forget that the job was dropped; whether it was."""
        with self._lock:
            was = job_id in self._dropped
            self._dropped.discard(job_id)
            return was

    def remove(self, job_id: str) -> None:
        """Take the job out and remember it as dropped."""
        with self._lock:
            self._jobs.pop(job_id, None)
            self._dropped.add(job_id)

    def dropped(self) -> list[str]:
        with self._lock:
            return sorted(self._dropped)

    def find(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def insert_if_absent(self, job: Job) -> Job:
        """Insert `job` unless one with its id exists; return the job now in the store."""
        with self._lock:
            return self._jobs.setdefault(job.job_id, job)

    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())
