"""The ingest core: the metadata store, the catalog and the queue over one data dir."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ingest_svc.core.append import AppendSession
from ingest_svc.core.catalog import Catalog
from ingest_svc.core.db import Database
from ingest_svc.core.queue import TaskQueue


class DataDirInUse(RuntimeError):
    """Another IngestCore (in this or another process) holds the data dir."""


class IngestCore:
    """Owns the data dir while open, enforced by an exclusive lock on
    `data_dir/LOCK` (released by the kernel even on kill -9): a second
    IngestCore on the same dir fails fast instead of racing on partition files.

    Thread-safety: every method of `catalog`, `queue` and `open_append` may be
    called from any thread.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        default_max_partition_bytes: int,
        default_lease_seconds: float,
        max_lease_seconds: float,
    ) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self._lock_fd = _lock_dir(data_dir)
        try:
            self.db = Database(data_dir / "meta.sqlite")
        except BaseException:
            os.close(self._lock_fd)
            raise
        self.catalog = Catalog(self.db, data_dir, default_max_partition_bytes)
        self.queue = TaskQueue(self.db, default_lease_seconds, max_lease_seconds)

    def recover(self) -> dict[str, int]:
        """Clean debris of interrupted Appends; call once before serving."""
        return self.catalog.recover()

    def open_append(self, dataset: str) -> AppendSession:
        """Start an Append stream to an existing dataset (NotFound otherwise)."""
        return AppendSession(self.catalog, self.catalog.get_dataset(dataset))

    def close(self) -> None:
        self.db.close()
        os.close(self._lock_fd)


def _lock_dir(data_dir: Path) -> int:
    fd = os.open(data_dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DataDirInUse(
            f"data dir {data_dir} is in use by another ingest process (pid {holder})"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd
