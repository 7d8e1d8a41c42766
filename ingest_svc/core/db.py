"""The SQLite metadata store: one connection, one lock, explicit transactions.

Thread-safety: every use of the connection goes through `transaction()`,
`write()` or `read()`, which hold one re-entrant lock, so the store can be
called from any thread (the servicer calls it from a thread pool). WAL with
synchronous=FULL makes a committed transaction survive kill -9 and power loss.

Group commit (`write`): the queue's small writes (lease, extend, complete)
arrive from many workers at once, and each commit costs an fsync. A caller
that finds a commit in progress queues its work; the next leader runs every
queued piece in one transaction, each inside its own SAVEPOINT (so one
piece's error undoes only that piece), and commits once. Nothing returns
before the commit that holds it is durable, so durability is unchanged.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

SCHEMA_VERSION = 2

_DDL = """
CREATE TABLE IF NOT EXISTS datasets (
    name TEXT PRIMARY KEY,
    schema_json TEXT NOT NULL,
    max_partition_bytes INTEGER NOT NULL,
    created_unix REAL NOT NULL,
    num_records INTEGER NOT NULL DEFAULT 0,
    num_partitions INTEGER NOT NULL DEFAULT 0,
    num_bytes INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS partitions (
    dataset TEXT NOT NULL REFERENCES datasets(name),
    partition_id INTEGER NOT NULL,
    num_records INTEGER NOT NULL,
    num_bytes INTEGER NOT NULL,
    created_unix REAL NOT NULL,
    PRIMARY KEY (dataset, partition_id)
);
-- One row per (job, epoch): what EnqueueEpoch was asked, for idempotency.
CREATE TABLE IF NOT EXISTS epochs (
    job_id TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    dataset TEXT NOT NULL,
    shuffle INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    enqueued_unix REAL NOT NULL,
    PRIMARY KEY (job_id, epoch)
);
CREATE TABLE IF NOT EXISTS tasks (
    job_id TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    partition_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    dataset TEXT NOT NULL,
    num_records INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'leased', 'completed')),
    attempt INTEGER NOT NULL DEFAULT 0,
    lease_id TEXT,  -- the live lease, or once completed the lease that completed it
    completed_by TEXT,  -- the worker whose attempt won
    PRIMARY KEY (job_id, epoch, partition_id)
);
CREATE INDEX IF NOT EXISTS tasks_next ON tasks (job_id, state, epoch, seq);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks (state);
-- Every lease ever granted, so a late CompleteTask can be told what happened to it.
CREATE TABLE IF NOT EXISTS leases (
    lease_id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    partition_id INTEGER NOT NULL,
    worker_id TEXT NOT NULL,
    leased_unix REAL NOT NULL,
    deadline_unix REAL NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('active', 'expired', 'completed')),
    ended_unix REAL
);
CREATE INDEX IF NOT EXISTS leases_active ON leases (state, deadline_unix);
"""


class Database:
    """Owner of the one SQLite connection of the process."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction
        # spans exactly the statements we group.
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._lock = threading.RLock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{path} has schema version {version}; this build knows up to {SCHEMA_VERSION}"
                )
            if version == 1:  # before completed_by
                self._conn.execute("ALTER TABLE tasks ADD COLUMN completed_by TEXT")
            self._conn.executescript(_DDL)
            self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._group = threading.Condition()
        self._pending: list[_Work] = []
        self._leading = False

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE): commits on normal exit, rolls back on error."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            try:
                self._conn.execute("COMMIT")
            except BaseException:
                # A failed COMMIT may leave the transaction open; never leave it dangling.
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in a write transaction shared with whatever else is queued (group
        commit); returns its result, or raises its error, once the commit is durable."""
        work = _Work(fn)
        with self._group:
            self._pending.append(work)
            while self._leading and not work.finished:
                self._group.wait()
            if work.finished:
                return work.outcome()
            self._leading = True
            batch, self._pending = self._pending, []
        try:
            self._commit(batch)
        finally:
            with self._group:
                self._leading = False
                self._group.notify_all()
        return work.outcome()

    def _commit(self, batch: list[_Work]) -> None:
        try:
            with self.transaction() as conn:
                for i, work in enumerate(batch):
                    conn.execute(f"SAVEPOINT w{i}")
                    try:
                        work.result = work.fn(conn)
                    except Exception as e:
                        conn.execute(f"ROLLBACK TO w{i}")
                        work.error = e
                    conn.execute(f"RELEASE w{i}")
        except BaseException as e:  # the commit itself failed: nothing of the batch holds
            for work in batch:
                work.result, work.error = None, e
            raise
        finally:
            for work in batch:
                work.finished = True

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """Consistent reads: the lock keeps other threads' transactions out meanwhile."""
        with self._lock:
            yield self._conn

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class _Work:
    """One caller's piece of a group commit."""

    __slots__ = ("error", "finished", "fn", "result")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished = False

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result
