"""The work queue: one task per (job, epoch, partition), handed out under leases.

States: a task is `pending`, `leased` (under exactly one active lease) or
`completed`. A lease is `active`, `expired` or `completed`. An active lease
whose deadline has passed expires on the next queue call (or sweep): its task
returns to `pending` with attempt + 1, and the lease can no longer complete.
Everything lives in SQLite, so leases and progress survive a restart
(deadlines are wall-clock unix times).

Thread-safety: every method runs as one transaction under the store's lock.
"""

from __future__ import annotations

import math
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from mlmesh.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

from ingest_svc.core import metrics
from ingest_svc.core.db import Database
from ingest_svc.core.schema import validate_dataset_name

MAX_ID_CHARS = 256
MAX_TASKS_PER_LEASE = 64


@dataclass(frozen=True)
class EpochProgress:
    epoch: int
    pending: int
    leased: int
    completed: int

    @property
    def total(self) -> int:
        return self.pending + self.leased + self.completed


@dataclass(frozen=True)
class QueueStatus:
    job_id: str
    pending: int
    leased: int
    completed: int
    epochs: tuple[EpochProgress, ...] = ()

    @property
    def total(self) -> int:
        return self.pending + self.leased + self.completed

    @property
    def done(self) -> bool:
        return self.total > 0 and self.completed == self.total


@dataclass(frozen=True)
class Task:
    task_id: str
    job_id: str
    dataset: str
    partition_id: int
    epoch: int
    num_records: int
    lease_id: str
    lease_deadline_unix: float
    attempt: int


@dataclass(frozen=True)
class LeaseInfo:
    lease_id: str
    task_id: str
    worker_id: str
    state: str  # active | expired | completed
    deadline_unix: float


@dataclass(frozen=True)
class Completion:
    job_id: str
    epoch: int
    partition_id: int
    lease_id: str
    worker_id: str
    attempt: int


def task_id(job_id: str, epoch: int, partition_id: int) -> str:
    return f"{job_id}/e{epoch}/p{partition_id}"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def _validate_id(kind: str, value: str) -> str:
    if not value:
        raise InvalidArgument(f"{kind} is empty")
    if len(value) > MAX_ID_CHARS or not value.isprintable():
        raise InvalidArgument(
            f"{kind} {value[:64]!r} is invalid: expected 1-{MAX_ID_CHARS} printable characters"
        )
    return value


class TaskQueue:
    def __init__(
        self,
        db: Database,
        default_lease_seconds: float,
        max_lease_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self.default_lease_seconds = default_lease_seconds
        self.max_lease_seconds = max_lease_seconds
        self._clock = clock

    def enqueue_epoch(
        self,
        job_id: str,
        dataset: str,
        epoch: int,
        shuffle: bool,
        seed: int,
        since_unix: float = 0.0,
        from_partition_id: int = 0,
        to_partition_id: int = 0,
    ) -> tuple[int, QueueStatus]:
        """Create one pending task per partition of `dataset` (as it is now; with
        `since_unix`, only those that arrived at or after it) for (job_id, epoch),
        in partition-id order or, with `shuffle`, in the order of a permutation
        determined by `seed` alone.

        Idempotent per (job_id, epoch): a repeat of the same request enqueues 0;
        a repeat naming another dataset, shuffle or seed is AlreadyExists.
        """
        _validate_id("job_id", job_id)
        validate_dataset_name(dataset)
        if epoch < 0:
            raise InvalidArgument(f"epoch is {epoch}; expected >= 0")
        if from_partition_id < 0 or to_partition_id < 0:
            raise InvalidArgument(
                f"from_partition_id {from_partition_id} and to_partition_id {to_partition_id} must be >= 0"
            )
        upper = to_partition_id or (1 << 62)
        if not math.isfinite(since_unix) or since_unix < 0:
            raise InvalidArgument(f"since_unix is {since_unix}; expected 0 (every partition) or a unix time")
        now = self._clock()
        self._expire_due(now)
        with self._db.transaction() as conn:
            if conn.execute("SELECT 1 FROM datasets WHERE name = ?", (dataset,)).fetchone() is None:
                raise NotFound(f"dataset {dataset!r} not found")
            prior = conn.execute(
                "SELECT dataset, shuffle, seed FROM epochs WHERE job_id = ? AND epoch = ?", (job_id, epoch)
            ).fetchone()
            if prior is not None:
                want = (dataset, int(shuffle), seed if shuffle else 0)
                if tuple(prior) != want:
                    raise AlreadyExists(
                        f"epoch {epoch} of job {job_id!r} was already enqueued with dataset={prior[0]!r} "
                        f"shuffle={bool(prior[1])} seed={prior[2]}, not dataset={dataset!r} "
                        f"shuffle={shuffle} seed={seed}"
                    )
                return 0, self._status(conn, job_id)
            parts = conn.execute(
                "SELECT partition_id, num_records FROM partitions WHERE dataset = ? AND created_unix >= ? "
                "AND partition_id >= ? AND partition_id < ? ORDER BY partition_id",
                (dataset, since_unix, from_partition_id, upper),
            ).fetchall()
            if not parts:
                if from_partition_id or to_partition_id:
                    raise FailedPrecondition(
                        f"dataset {dataset!r} has no partition with an id in [{from_partition_id}, "
                        f"{to_partition_id or 'end'})"
                    )
                if since_unix:
                    raise FailedPrecondition(
                        f"dataset {dataset!r} has no partitions that arrived since {_iso(since_unix)}"
                    )
                raise FailedPrecondition(f"dataset {dataset!r} has no partitions yet; append records first")
            order = list(range(len(parts)))
            if shuffle:
                # numpy wants a non-negative seed; the bit pattern keeps every int64 distinct.
                order = np.random.default_rng(seed & 0xFFFF_FFFF_FFFF_FFFF).permutation(len(parts)).tolist()
            conn.execute(
                "INSERT INTO epochs (job_id, epoch, dataset, shuffle, seed, enqueued_unix) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, epoch, dataset, int(shuffle), seed if shuffle else 0, now),
            )
            conn.executemany(
                "INSERT INTO tasks (job_id, epoch, partition_id, seq, dataset, num_records, state) "
                "VALUES (?, ?, ?, ?, ?, ?, 'pending')",
                [(job_id, epoch, parts[i][0], seq, dataset, parts[i][1]) for seq, i in enumerate(order)],
            )
            status = self._status(conn, job_id)
            self._update_gauges(conn)
        metrics.TASKS_ENQUEUED.inc(len(parts))
        return len(parts), status

    def lease(
        self,
        job_id: str,
        worker_id: str,
        lease_seconds: float,
        max_tasks: int = 1,
        complete: Sequence[str] = (),
    ) -> tuple[list[Task], QueueStatus]:
        """Lease up to `max_tasks` of the job's pending tasks, in queue order (lowest epoch
        first, then the epoch's order), each under its own lease, in one commit - after
        completing the leases in `complete` (as `complete` does each) in that same commit.

        Returns ([], status) when nothing is pending right now. NotFound if
        nothing was ever enqueued for the job. All or nothing: a lease of
        `complete` that cannot complete (NotFound, FailedPrecondition) fails the
        call, and nothing is completed or leased.
        """
        _validate_id("job_id", job_id)
        _validate_id("worker_id", worker_id)
        seconds = self._lease_seconds(lease_seconds)
        if not 0 <= max_tasks <= MAX_TASKS_PER_LEASE:
            raise InvalidArgument(f"max_tasks is {max_tasks}; expected 0 (one task) to {MAX_TASKS_PER_LEASE}")
        if len(complete) > MAX_TASKS_PER_LEASE:
            raise InvalidArgument(
                f"complete_lease_ids has {len(complete)} leases; at most {MAX_TASKS_PER_LEASE} per call"
            )
        for lease_id in complete:
            _validate_id("complete_lease_ids entry", lease_id)
        now = self._clock()
        self._expire_due(now)
        completed = 0

        def grant(conn: sqlite3.Connection) -> tuple[list[Task], QueueStatus]:
            nonlocal completed
            self._require_job(conn, job_id)
            completed = sum(self.complete_in(conn, lease_id, now)[1] for lease_id in complete)
            rows = conn.execute(
                "SELECT epoch, partition_id, dataset, num_records, attempt FROM tasks "
                "WHERE job_id = ? AND state = 'pending' ORDER BY epoch, seq LIMIT ?",
                (job_id, max(max_tasks, 1)),
            ).fetchall()
            deadline = now + seconds
            tasks = []
            for epoch, partition_id, dataset, num_records, attempt in rows:
                lease_id = uuid.uuid4().hex
                conn.execute(
                    "UPDATE tasks SET state = 'leased', lease_id = ? "
                    "WHERE job_id = ? AND epoch = ? AND partition_id = ?",
                    (lease_id, job_id, epoch, partition_id),
                )
                conn.execute(
                    "INSERT INTO leases (lease_id, job_id, epoch, partition_id, worker_id, leased_unix, "
                    "deadline_unix, state) VALUES (?, ?, ?, ?, ?, ?, ?, 'active')",
                    (lease_id, job_id, epoch, partition_id, worker_id, now, deadline),
                )
                tasks.append(
                    Task(
                        task_id(job_id, epoch, partition_id),
                        job_id,
                        dataset,
                        partition_id,
                        epoch,
                        num_records,
                        lease_id,
                        deadline,
                        attempt,
                    )
                )
            status = self._status(conn, job_id)
            if tasks:  # (complete_in updated them for the completions)
                self._update_gauges(conn)
            return tasks, status

        tasks, status = self._db.write(grant)
        metrics.TASKS_LEASED.inc(len(tasks))
        if completed:
            metrics.TASKS_COMPLETED.inc(completed)
        return tasks, status

    def extend(self, lease_id: str, lease_seconds: float) -> float:
        """Move an active lease's deadline to now + lease_seconds; returns the new deadline."""
        _validate_id("lease_id", lease_id)
        seconds = self._lease_seconds(lease_seconds)
        now = self._clock()
        self._expire_due(now)

        def extend(conn: sqlite3.Connection) -> float:
            self._active_lease(conn, lease_id, "extend")
            deadline = now + seconds
            conn.execute("UPDATE leases SET deadline_unix = ? WHERE lease_id = ?", (deadline, lease_id))
            return deadline

        return self._db.write(extend)

    def complete(self, lease_id: str) -> QueueStatus:
        """Mark the lease's task completed, by the lease's worker. Idempotent: completing an
        already completed lease again is OK and changes nothing. A lease that expired
        cannot complete (FailedPrecondition): its task went back to the queue."""
        _validate_id("lease_id", lease_id)
        now = self._clock()
        self._expire_due(now)

        def complete(conn: sqlite3.Connection) -> tuple[QueueStatus, bool]:
            return self.complete_in(conn, lease_id, now)

        status, first = self._db.write(complete)
        if first:
            metrics.TASKS_COMPLETED.inc()
        return status

    def get_lease(self, lease_id: str) -> LeaseInfo:
        """What became of a lease (an overdue one is expired first)."""
        _validate_id("lease_id", lease_id)
        self._expire_due(self._clock())
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT job_id, epoch, partition_id, worker_id, state, deadline_unix FROM leases "
                "WHERE lease_id = ?",
                (lease_id,),
            ).fetchone()
        if row is None:
            raise NotFound(f"lease {lease_id!r} not found")
        job_id, epoch, partition_id, worker_id, state, deadline = row
        return LeaseInfo(lease_id, task_id(job_id, epoch, partition_id), worker_id, state, deadline)

    def complete_in(self, conn: sqlite3.Connection, lease_id: str, now: float) -> tuple[QueueStatus, bool]:
        """`complete` inside the caller's transaction: (status, whether this call completed it)."""
        job_id, epoch, partition_id, state = self._active_lease(conn, lease_id, "complete")
        if state == "active":
            conn.execute(
                "UPDATE leases SET state = 'completed', ended_unix = ? WHERE lease_id = ?", (now, lease_id)
            )
            conn.execute(
                "UPDATE tasks SET state = 'completed', completed_by = "
                "(SELECT worker_id FROM leases WHERE lease_id = ?) "
                "WHERE job_id = ? AND epoch = ? AND partition_id = ?",
                (lease_id, job_id, epoch, partition_id),
            )
            self._update_gauges(conn)
        return self._status(conn, job_id), state == "active"

    def output_commit(self, lease_id: str) -> Callable[[sqlite3.Connection], QueueStatus]:
        """For an Append that is a task's output: checks now that the lease is active (so a
        doomed stream fails before it sends its data) and returns the step that completes the
        task inside the Append's commit. ALREADY_EXISTS if the task already completed under
        this lease (its output landed), FAILED_PRECONDITION if the lease lapsed."""
        _validate_id("complete_lease_id", lease_id)
        self._expire_due(self._clock())

        def check(conn: sqlite3.Connection, at: float) -> None:
            job_id, epoch, partition_id, state = self._active_lease(conn, lease_id, "complete")
            if state == "completed":
                raise AlreadyExists(
                    f"lease {lease_id!r} already completed task {task_id(job_id, epoch, partition_id)}: "
                    "its output was committed then; nothing of this stream was kept"
                )

        with self._db.read() as conn:
            check(conn, self._clock())

        def commit(conn: sqlite3.Connection) -> QueueStatus:
            now = self._clock()
            self._expire(conn, now)  # a lease that lapsed while the stream was sent cannot commit
            check(conn, now)
            status, _ = self.complete_in(conn, lease_id, now)
            metrics.TASKS_COMPLETED.inc()
            return status

        return commit

    def completions(self, job_id: str) -> list[Completion]:
        """Every completed task of the job: which lease, worker and attempt won it."""
        _validate_id("job_id", job_id)
        with self._db.read() as conn:
            self._require_job(conn, job_id)
            rows = conn.execute(
                "SELECT epoch, partition_id, lease_id, completed_by, attempt FROM tasks "
                "WHERE job_id = ? AND state = 'completed' ORDER BY epoch, seq",
                (job_id,),
            ).fetchall()
        return [Completion(job_id, *row) for row in rows]

    def status(self, job_id: str) -> QueueStatus:
        _validate_id("job_id", job_id)
        self._expire_due(self._clock())
        with self._db.read() as conn:
            self._require_job(conn, job_id)
            return self._status(conn, job_id)

    def expire_leases(self) -> int:
        """Return tasks of overdue leases to pending and refresh the queue gauges;
        the periodic sweep (and start-up) call this."""
        n = self._expire_due(self._clock())
        with self._db.read() as conn:
            self._update_gauges(conn)
        return n

    # -- helpers ---------------------------------------------------------------------

    def _expire_due(self, now: float) -> int:
        """Expire overdue leases in a piece of work of their own, so an error in the
        caller's (which rolls back) does not undo the expiry. Nothing is written (no
        commit to wait for) when no lease is overdue, which is the common case."""
        with self._db.read() as conn:
            overdue = conn.execute(
                "SELECT 1 FROM leases WHERE state = 'active' AND deadline_unix <= ? LIMIT 1", (now,)
            ).fetchone()
        if overdue is None:
            return 0

        def expire(conn: sqlite3.Connection) -> int:
            n = self._expire(conn, now)
            if n:
                self._update_gauges(conn)
            return n

        n = self._db.write(expire)
        if n:
            metrics.LEASES_EXPIRED.inc(n)
        return n

    def _lease_seconds(self, requested: float) -> float:
        if math.isnan(requested) or requested < 0 or requested > self.max_lease_seconds:
            raise InvalidArgument(
                f"lease_seconds is {requested}; expected 0 (server default of {self.default_lease_seconds}s) "
                f"or a value in (0, {self.max_lease_seconds}]"
            )
        return requested or self.default_lease_seconds

    def _expire(self, conn: sqlite3.Connection, now: float) -> int:
        overdue = conn.execute(
            "SELECT lease_id, job_id, epoch, partition_id FROM leases "
            "WHERE state = 'active' AND deadline_unix <= ?",
            (now,),
        ).fetchall()
        if not overdue:
            return 0
        conn.executemany(
            "UPDATE leases SET state = 'expired', ended_unix = deadline_unix WHERE lease_id = ?",
            [(r[0],) for r in overdue],
        )
        conn.executemany(
            "UPDATE tasks SET state = 'pending', attempt = attempt + 1, lease_id = NULL "
            "WHERE job_id = ? AND epoch = ? AND partition_id = ? AND lease_id = ?",
            [(r[1], r[2], r[3], r[0]) for r in overdue],
        )
        return len(overdue)

    def _active_lease(
        self, conn: sqlite3.Connection, lease_id: str, action: str
    ) -> tuple[str, int, int, str]:
        """The lease's (job_id, epoch, partition_id, state); raises unless it is active,
        except that `complete` accepts an already completed lease."""
        row = conn.execute(
            "SELECT job_id, epoch, partition_id, state, deadline_unix, ended_unix FROM leases "
            "WHERE lease_id = ?",
            (lease_id,),
        ).fetchone()
        if row is None:
            raise NotFound(f"lease {lease_id!r} not found")
        job_id, epoch, partition_id, state, deadline, ended = row
        if state == "expired":
            ago = self._clock() - deadline
            raise FailedPrecondition(
                f"cannot {action} lease {lease_id!r}: it expired at {_iso(deadline)} ({ago:.1f}s ago) "
                f"and its task ({task_id(job_id, epoch, partition_id)}) went back to the queue"
            )
        if state == "completed" and action != "complete":
            raise FailedPrecondition(
                f"cannot {action} lease {lease_id!r}: its task was completed at {_iso(ended)}"
            )
        return job_id, epoch, partition_id, state

    @staticmethod
    def _require_job(conn: sqlite3.Connection, job_id: str) -> None:
        if conn.execute("SELECT 1 FROM epochs WHERE job_id = ? LIMIT 1", (job_id,)).fetchone() is None:
            raise NotFound(f"job {job_id!r} not found: no epoch was ever enqueued for it")

    @staticmethod
    def _status(conn: sqlite3.Connection, job_id: str) -> QueueStatus:
        per: dict[int, dict[str, int]] = {}
        for epoch, state, n in conn.execute(
            "SELECT epoch, state, count(*) FROM tasks WHERE job_id = ? GROUP BY epoch, state", (job_id,)
        ):
            per.setdefault(epoch, {})[state] = n
        epochs = tuple(
            EpochProgress(e, c.get("pending", 0), c.get("leased", 0), c.get("completed", 0))
            for e, c in sorted(per.items())
        )
        return QueueStatus(
            job_id,
            sum(e.pending for e in epochs),
            sum(e.leased for e in epochs),
            sum(e.completed for e in epochs),
            epochs,
        )

    @staticmethod
    def _update_gauges(conn: sqlite3.Connection) -> None:
        counts = dict(
            conn.execute(
                "SELECT state, count(*) FROM tasks WHERE state != 'completed' GROUP BY state"
            ).fetchall()
        )
        metrics.QUEUE_PENDING.set(counts.get("pending", 0))
        metrics.QUEUE_LEASED.set(counts.get("leased", 0))
