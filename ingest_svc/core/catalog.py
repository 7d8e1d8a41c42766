"""Datasets and their partitions: metadata in SQLite, records in partition files.

Directory layout under `data_dir`::

    meta.sqlite                       the metadata store (datasets, partitions, queue)
    datasets/<name>/part-%08d.bin     committed partitions (immutable)
    datasets/<name>/.tmp-*            files of an Append stream not yet committed

A partition exists when its row is committed; a file without a row is
debris of an interrupted Append and `recover()` deletes it at start.

Thread-safety: all methods may be called from any thread; metadata changes
are serialized by the store's lock.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlmesh.errors import AlreadyExists, InvalidArgument, NotFound
from mlmesh.files import fsync_dir
from mlmesh.logging import get_logger

from ingest_svc.core import metrics
from ingest_svc.core.db import Database
from ingest_svc.core.files import CorruptPartition, PartitionData, read_partition
from ingest_svc.core.mapped import MappedPartitions, identity
from ingest_svc.core.schema import Schema, validate_dataset_name

MIN_PARTITION_BYTES = 4 * 1024
MAX_PARTITION_BYTES = 1024 * 1024 * 1024
TEMP_PREFIX = ".tmp-"
_DATASET_COLUMNS = (
    "name, schema_json, max_partition_bytes, created_unix, num_records, num_partitions, num_bytes"
)

log = get_logger("ingest.catalog")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    schema: Schema
    num_records: int
    num_partitions: int
    num_bytes: int
    max_partition_bytes: int
    created_unix: float


@dataclass(frozen=True)
class PartitionInfo:
    dataset: str
    partition_id: int
    num_records: int
    num_bytes: int
    created_unix: float


@dataclass(frozen=True)
class StagedPartition:
    """A partition file written under a temp name, waiting for its stream to commit."""

    path: Path
    num_records: int
    num_bytes: int


def _counted(data: PartitionData) -> PartitionData:
    metrics.PARTITIONS_READ.inc()
    metrics.BYTES_READ.inc(data.num_records * data.schema.record_bytes)
    return data


def partition_filename(partition_id: int) -> str:
    return f"part-{partition_id:08d}.bin"


class Catalog:
    def __init__(self, db: Database, data_dir: Path, default_max_partition_bytes: int) -> None:
        self._db = db
        self._root = data_dir / "datasets"
        self._root.mkdir(parents=True, exist_ok=True)
        self.default_max_partition_bytes = default_max_partition_bytes
        self.mapped = MappedPartitions()

    def dataset_dir(self, name: str) -> Path:
        return self._root / name

    # -- datasets -----------------------------------------------------------

    def create_dataset(self, name: str, schema: Schema, max_partition_bytes: int) -> tuple[DatasetInfo, bool]:
        """Create, or return the existing dataset if the request matches it.

        Idempotent: same schema (and the same max_partition_bytes, when one is
        given) returns (existing, False); anything else is AlreadyExists.
        """
        validate_dataset_name(name)
        if max_partition_bytes < 0:
            raise InvalidArgument(
                f"max_partition_bytes is {max_partition_bytes}; expected 0 (server default) or more"
            )
        if max_partition_bytes and not MIN_PARTITION_BYTES <= max_partition_bytes <= MAX_PARTITION_BYTES:
            raise InvalidArgument(
                f"max_partition_bytes is {max_partition_bytes}; expected 0 (server default) or "
                f"{MIN_PARTITION_BYTES}..{MAX_PARTITION_BYTES}"
            )
        limit = max_partition_bytes or self.default_max_partition_bytes
        directory = self.dataset_dir(name)
        with self._db.transaction() as conn:
            row = conn.execute(f"SELECT {_DATASET_COLUMNS} FROM datasets WHERE name = ?", (name,)).fetchone()
            if row is not None:
                existing = _dataset(row)
                if existing.schema != schema:
                    raise AlreadyExists(
                        f"dataset {name!r} already exists with schema ({existing.schema.describe()}), "
                        f"not ({schema.describe()})"
                    )
                if max_partition_bytes and max_partition_bytes != existing.max_partition_bytes:
                    raise AlreadyExists(
                        f"dataset {name!r} already exists with max_partition_bytes "
                        f"{existing.max_partition_bytes}, not {max_partition_bytes}"
                    )
                return existing, False
            # The directory first: a crash before COMMIT leaves an empty directory, which
            # recover() removes; a committed row always has its directory.
            directory.mkdir(exist_ok=True)
            fsync_dir(self._root)
            now = time.time()
            conn.execute(
                "INSERT INTO datasets (name, schema_json, max_partition_bytes, created_unix) "
                "VALUES (?, ?, ?, ?)",
                (name, schema.to_json(), limit, now),
            )
        log.info("dataset created", dataset=name, schema=schema.describe(), max_partition_bytes=limit)
        return DatasetInfo(name, schema, 0, 0, 0, limit, now), True

    def get_dataset(self, name: str) -> DatasetInfo:
        validate_dataset_name(name)
        with self._db.read() as conn:
            row = conn.execute(f"SELECT {_DATASET_COLUMNS} FROM datasets WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"dataset {name!r} not found")
        return _dataset(row)

    def list_datasets(self) -> list[DatasetInfo]:
        with self._db.read() as conn:
            rows = conn.execute(f"SELECT {_DATASET_COLUMNS} FROM datasets ORDER BY name").fetchall()
        return [_dataset(r) for r in rows]

    # -- partitions -----------------------------------------------------------

    def list_partitions(self, name: str) -> list[PartitionInfo]:
        with self._db.read() as conn:
            self._require_dataset(conn, name)
            rows = conn.execute(
                "SELECT dataset, partition_id, num_records, num_bytes, created_unix FROM partitions "
                "WHERE dataset = ? ORDER BY partition_id",
                (name,),
            ).fetchall()
        return [PartitionInfo(*r) for r in rows]

    def get_partition(self, name: str, partition_id: int) -> PartitionInfo:
        if partition_id < 0:
            raise InvalidArgument(f"partition_id is {partition_id}; expected >= 0")
        with self._db.read() as conn:
            self._require_dataset(conn, name)
            row = conn.execute(
                "SELECT dataset, partition_id, num_records, num_bytes, created_unix FROM partitions "
                "WHERE dataset = ? AND partition_id = ?",
                (name, partition_id),
            ).fetchone()
            if row is None:
                count = conn.execute("SELECT count(*) FROM partitions WHERE dataset = ?", (name,)).fetchone()[
                    0
                ]
                raise NotFound(
                    f"dataset {name!r} has no partition {partition_id} (it has {count} partitions)"
                )
        return PartitionInfo(*row)

    def load_partition(self, name: str, partition_id: int) -> PartitionData:
        """A committed partition, mapped (blocking I/O on a first read; `data.schema` is its
        dataset's schema). Its checksums are verified as it is read (`PartitionData.verify`),
        on every read. Raises CorruptPartition if the file is missing or disagrees with the
        metadata.
        """
        path = self.dataset_dir(name) / partition_filename(partition_id)
        data = self.mapped.get((name, partition_id), path)
        if data is None:
            data = self._map_partition(name, partition_id, path)
        return _counted(data)

    def mapped_partition(self, name: str, partition_id: int) -> PartitionData | None:
        """`load_partition` when the partition is still mapped (it costs a `stat`, cheap
        enough for an event loop); None when it has to be loaded."""
        path = self.dataset_dir(name) / partition_filename(partition_id)
        data = self.mapped.get((name, partition_id), path)
        return None if data is None else _counted(data)

    def _map_partition(self, name: str, partition_id: int, path: Path) -> PartitionData:
        dataset = self.get_dataset(name)
        info = self.get_partition(name, partition_id)
        try:
            ident = identity(path)  # before mapping: a file replaced meanwhile is a miss next time
            data = read_partition(path, dataset.schema)
        except FileNotFoundError:
            raise CorruptPartition(f"partition file {path} of a committed partition is missing") from None
        if data.num_records != info.num_records:
            raise CorruptPartition(
                f"{path} holds {data.num_records} records but the metadata says {info.num_records}"
            )
        self.mapped.put((name, partition_id), data, ident)
        return data

    def commit_partitions(
        self,
        name: str,
        staged: list[StagedPartition],
        on_commit: Callable[[sqlite3.Connection], Any] | None = None,
    ) -> tuple[list[PartitionInfo], Any]:
        """Make staged files committed partitions, all or none, with fresh ids; `on_commit`
        runs inside the same transaction (a task's completion: the output and the task's
        end are one commit). Returns the partitions and what `on_commit` returned.

        Ids are allocated here, under the store's write lock, so concurrent
        streams to one dataset never collide. On failure every renamed file is
        removed again; the caller still owns (and deletes) the staged files.
        """
        directory = self.dataset_dir(name)
        now = time.time()
        renamed: list[Path] = []
        try:
            with self._db.transaction() as conn:
                self._require_dataset(conn, name)
                last = conn.execute(
                    "SELECT max(partition_id) FROM partitions WHERE dataset = ?", (name,)
                ).fetchone()[0]
                first_id = 0 if last is None else last + 1
                out = []
                for i, st in enumerate(staged):
                    pid = first_id + i
                    final = directory / partition_filename(pid)
                    os.rename(st.path, final)
                    renamed.append(final)
                    out.append(PartitionInfo(name, pid, st.num_records, st.num_bytes, now))
                if renamed:
                    fsync_dir(directory)
                conn.executemany(
                    "INSERT INTO partitions (dataset, partition_id, num_records, num_bytes, created_unix) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [(p.dataset, p.partition_id, p.num_records, p.num_bytes, p.created_unix) for p in out],
                )
                conn.execute(
                    "UPDATE datasets SET num_records = num_records + ?, num_partitions = num_partitions + ?, "
                    "num_bytes = num_bytes + ? WHERE name = ?",
                    (sum(p.num_records for p in out), len(out), sum(p.num_bytes for p in out), name),
                )
                hooked = on_commit(conn) if on_commit is not None else None
        except BaseException:
            for path in renamed:
                path.unlink(missing_ok=True)
            raise
        return out, hooked

    # -- start-up -------------------------------------------------------------

    def recover(self) -> dict[str, int]:
        """Delete debris of interrupted Appends: temp files, partition files with no
        committed row, and directories of datasets that were never committed.
        Call once at start, before serving."""
        with self._db.read() as conn:
            known = {r[0] for r in conn.execute("SELECT name FROM datasets")}
            committed = {
                (d, partition_filename(p))
                for d, p in conn.execute("SELECT dataset, partition_id FROM partitions")
            }
        removed = {"temp_files": 0, "orphan_partitions": 0, "orphan_dirs": 0}
        for directory in sorted(p for p in self._root.iterdir() if p.is_dir()):
            changed = False
            for path in directory.iterdir():
                if path.name.startswith(TEMP_PREFIX):
                    path.unlink()
                    removed["temp_files"] += 1
                    changed = True
                elif path.name.startswith("part-") and (directory.name, path.name) not in committed:
                    path.unlink()
                    removed["orphan_partitions"] += 1
                    changed = True
            if changed:
                fsync_dir(directory)
            if directory.name not in known and not any(directory.iterdir()):
                directory.rmdir()
                removed["orphan_dirs"] += 1
        missing = [f"{d}/{f}" for d, f in committed if not (self._root / d / f).exists()]
        if missing:
            log.error("committed partition files are missing", files=sorted(missing)[:20], count=len(missing))
        log.info("recovered data dir", root=str(self._root), **removed)
        return removed

    @staticmethod
    def _require_dataset(conn: sqlite3.Connection, name: str) -> None:
        validate_dataset_name(name)
        row = conn.execute("SELECT 1 FROM datasets WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"dataset {name!r} not found")


def _dataset(row: tuple) -> DatasetInfo:
    name, schema_json, max_bytes, created, records, partitions, nbytes = row
    return DatasetInfo(name, Schema.from_json(schema_json), records, partitions, nbytes, max_bytes, created)
