"""Committed partitions kept mapped between reads.

A read of a partition used to look up its dataset and row in the metadata store
(waiting behind any queue commit and its fsync), open and map the file, parse
its header, and fault every page of the mapping in again. A partition is
immutable once committed, so all of that stays true while its file is the same
file: this keeps the most recently read ones mapped (LRU), and a read of one of
them costs a `stat`. Checksums are not cached: every read gets a PartitionData
with no block verified yet, so each read still verifies what it sends.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

from ingest_svc.core.files import PartitionData

# Each mapping holds a file descriptor (Python's mmap keeps a dup of it).
DEFAULT_CAPACITY = 128

FileIdentity = tuple[int, int, int, int]  # device, inode, size, mtime (ns)


def identity(path: Path) -> FileIdentity:
    """What tells one file at `path` from a later one (FileNotFoundError if none)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class MappedPartitions:
    """An LRU of (dataset, partition id) -> (mapped partition, file identity).

    Thread-safe. `get` answers only while the file at `path` is still the file that was
    mapped (same device, inode, size and mtime); a replaced or deleted file is a miss, and
    the caller loads it as on a first read.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, int], tuple[PartitionData, FileIdentity]] = OrderedDict()

    def get(self, key: tuple[str, int], path: Path) -> PartitionData | None:
        with self._lock:
            entry = self._entries.get(key)
        if entry is None:
            return None
        data, ident = entry
        try:
            same = identity(path) == ident
        except FileNotFoundError:
            same = False
        with self._lock:
            if not same:
                if self._entries.get(key) is entry:
                    del self._entries[key]
                return None
            if key in self._entries:
                self._entries.move_to_end(key)
        return replace(data, _verified=set())

    def put(self, key: tuple[str, int], data: PartitionData, ident: FileIdentity) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._entries[key] = (data, ident)
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)  # its mapping closes with its last reader

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
