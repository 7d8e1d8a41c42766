"""One Append stream: buffer validated batches, cut them into partitions, commit all or nothing."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from mlmesh.errors import InvalidArgument, ResourceExhausted

from ingest_svc.core import metrics
from ingest_svc.core.catalog import TEMP_PREFIX, Catalog, DatasetInfo, PartitionInfo, StagedPartition
from ingest_svc.core.files import write_partition

# A full file system, a full quota, or a file-size limit (RLIMIT_FSIZE): the client may retry later.
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class SessionClosed(Exception):
    """The session was aborted (or already committed) while still in use."""


class AppendSession:
    """The records of one Append stream, on their way to becoming partitions.

    Records are cut in arrival order into partitions of
    `max_partition_bytes // record_bytes` records (the last one smaller).
    Full partitions are written to temp files as soon as they fill, so memory
    stays bounded by about one partition; nothing is visible until `finish()`
    commits every partition of the stream in one transaction.

    Thread-safety: `add`, `flush` and `finish` belong to the stream. `add`
    and any number of `flush`es may run at once in different threads (the
    stream goes on receiving while partitions are written, each partition by
    one flush; they keep their arrival order); `finish` runs after every
    `flush` has returned. `abort` may be called
    from any thread at any moment - also while a `flush` is writing in another
    thread - and no file of the session survives it. After a successful
    `finish`, `abort` does nothing.
    """

    def __init__(self, catalog: Catalog, dataset: DatasetInfo) -> None:
        self._catalog = catalog
        self.dataset = dataset
        self._schema = dataset.schema
        self._dir = catalog.dataset_dir(dataset.name)
        self._record_bytes = self._schema.record_bytes
        self._per_partition = max(1, dataset.max_partition_bytes // max(self._record_bytes, 1))
        self._token = uuid.uuid4().hex
        self._seq = 0
        self._pending: list[dict[str, np.ndarray]] = []
        self._pending_records = 0
        self._staged: dict[int, StagedPartition] = {}  # by sequence number: arrival order
        self.committed_with: Any = None  # what finish's on_commit returned
        self._lock = threading.Lock()
        self._buffer_lock = threading.Lock()  # _pending: `add` vs a `flush` in another thread
        self._state = "open"  # open -> committing -> committed | aborted
        self.records = 0

    def add(self, arrays: Mapping[str, np.ndarray]) -> bool:
        """Validate and buffer a batch (no I/O). Returns True when a full partition
        is buffered and `flush()` should be called."""
        n = self._schema.validate_batch(arrays)
        if n == 0:
            return False
        if self._record_bytes > self.dataset.max_partition_bytes:
            raise InvalidArgument(
                f"a record of dataset {self.dataset.name!r} has {self._record_bytes} bytes "
                f"({self._schema.describe()}) but its max_partition_bytes is "
                f"{self.dataset.max_partition_bytes}; a record must fit in one partition"
            )
        with self._buffer_lock:
            self._pending.append(dict(arrays))
            self._pending_records += n
            self.records += n
            return self._pending_records >= self._per_partition

    def flush(self) -> None:
        """Write every full partition buffered so far, including those `add` buffers while
        this runs (blocking I/O)."""
        while True:
            with self._buffer_lock:
                if self._pending_records < self._per_partition:
                    return
                columns, seq = self._take(self._per_partition)
            self._write(columns, self._per_partition, seq)

    def finish(self, on_commit: Callable[[sqlite3.Connection], Any] | None = None) -> list[PartitionInfo]:
        """Write the remainder and commit the stream's partitions (blocking I/O); `on_commit`
        runs in the commit's transaction, and its result is kept in `committed_with`."""
        self.flush()
        with self._buffer_lock:
            rest = self._pending_records
            columns, seq = self._take(rest)
        if rest:
            self._write(columns, rest, seq)
        with self._lock:
            if self._state != "open":
                raise SessionClosed(f"append session is {self._state}")
            self._state = "committing"
            staged = [self._staged[seq] for seq in sorted(self._staged)]
        try:
            parts, self.committed_with = self._catalog.commit_partitions(self.dataset.name, staged, on_commit)
        except BaseException as e:
            with self._lock:
                self._state = "open"
            self.abort()
            if isinstance(e, sqlite3.OperationalError) and "full" in str(e):
                raise self._no_space(f"commit its {len(staged)} partition(s)", str(e)) from e
            if isinstance(e, OSError) and e.errno in _NO_SPACE:
                raise self._no_space(f"commit its {len(staged)} partition(s)", os.strerror(e.errno)) from e
            raise
        with self._lock:
            self._state = "committed"
            self._staged = {}
        metrics.RECORDS_APPENDED.inc(self.records)
        metrics.BYTES_APPENDED.inc(sum(p.num_bytes for p in parts))
        metrics.PARTITIONS_WRITTEN.inc(len(parts))
        return parts

    def abort(self) -> None:
        """Delete every file of the session; idempotent, a no-op once committing."""
        with self._lock:
            if self._state in ("committing", "committed"):
                return
            self._state = "aborted"
            staged, self._staged = list(self._staged.values()), {}
        for st in staged:
            st.path.unlink(missing_ok=True)

    def _no_space(self, what: str, cause: str) -> ResourceExhausted:
        try:
            free = f"{shutil.disk_usage(self._dir).free} bytes free"
        except OSError:
            free = "free space unknown"
        return ResourceExhausted(
            f"no room to {what} of dataset {self.dataset.name!r}: {cause} ({free} under {self._dir}); "
            "nothing of this Append stream was kept"
        )

    def _take(self, count: int) -> tuple[dict[str, list[np.ndarray]], int]:
        """Remove the first `count` buffered records, as per-feature lists of views, and
        number them as the next partition (the caller holds `_buffer_lock`)."""
        columns: dict[str, list[np.ndarray]] = {name: [] for name in self._schema.names}
        first = self._schema.names[0]
        need = count
        while need:
            piece = self._pending[0]
            have = len(piece[first])
            take = min(have, need)
            for name in columns:
                columns[name].append(piece[name][:take])
            if take == have:
                self._pending.pop(0)
            else:
                self._pending[0] = {name: arr[take:] for name, arr in piece.items()}
            need -= take
        self._pending_records -= count
        self._seq += 1
        return columns, self._seq - 1

    def _write(self, columns: dict[str, list[np.ndarray]], count: int, seq: int) -> None:
        with self._lock:
            if self._state != "open":
                raise SessionClosed(f"append session is {self._state}")
        path = self._dir / f"{TEMP_PREFIX}{self._token}-{seq:06d}"
        try:
            nbytes = write_partition(path, self._schema, columns, count)
        except BaseException as e:
            path.unlink(missing_ok=True)
            if isinstance(e, OSError) and e.errno in _NO_SPACE:
                what = f"write a partition of {count} records ({count * self._record_bytes} bytes)"
                raise self._no_space(what, os.strerror(e.errno)) from e
            raise
        with self._lock:
            if self._state == "aborted":
                # abort() ran while we were writing and could not see this file.
                path.unlink(missing_ok=True)
                raise SessionClosed("append session was aborted")
            self._staged[seq] = StagedPartition(path, count, nbytes)
