"""The worker's local copy of partitions it has read.

Partitions are immutable in ingest, so (dataset, partition_id) names their
content for good; the record count is checked on every hit as a guard against
a dataset re-created under the same name. Files are `.npy` columns in one
uncompressed `.npz`, written atomically. Safe for several processes sharing a
cache directory (last writer wins with identical content).
"""

from __future__ import annotations

import os
import uuid
import zipfile
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

import numpy as np
from mlmesh.files import fsync_dir
from mlmesh.logging import get_logger

log = get_logger(__name__)


class PartitionCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, dataset: str, partition_id: int) -> Path:
        name = quote(dataset, safe="")
        if name.startswith("."):  # "." and ".." are path components, not names
            name = "%2E" + name[1:]
        return self.root / name / f"{partition_id}.npz"

    def get(self, dataset: str, partition_id: int, num_records: int) -> dict[str, np.ndarray] | None:
        """The cached columns, or None on a miss (or an unreadable / stale file, which is removed)."""
        path = self.path(dataset, partition_id)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                columns = {name: data[name] for name in data.files}
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            log.warning("cached partition unreadable; reading it again", path=str(path), error=str(e))
            path.unlink(missing_ok=True)
            return None
        lengths = {len(c) for c in columns.values()}
        if lengths != {num_records}:
            log.warning("cached partition is stale; reading it again", path=str(path), expected=num_records)
            path.unlink(missing_ok=True)
            return None
        return columns

    def put(self, dataset: str, partition_id: int, columns: Mapping[str, np.ndarray]) -> None:
        path = self.path(dataset, partition_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **columns)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_dir(path.parent)
        finally:
            tmp.unlink(missing_ok=True)
