"""The worker's local copy of partitions it has read: bounded, LRU, checksummed.

Partitions are immutable in ingest, so (dataset, partition_id) names their
content for good; the record count is checked on every hit as a guard against
a dataset re-created under the same name. One file per partition in the
format of `core/cachefile.py`, written to a temp file and renamed into place,
so a reader sees a whole file or none. Nothing is fsynced: what a crash tears
fails the checksum and is read from ingest again.

Shared by the workers of a host (one directory, several processes):

- the directory is the index. Each file's size is its share of the bound and
  its mtime its last use (a hit sets it; atime is useless under relatime or
  noatime). Admitting a file scans the directory, evicts least recently used
  files until the new one fits and renames it in, all under an flock on
  `<root>/.lock`, so every process sees the others' files and the bound holds
  for the whole directory. The only excess: temp files still being written
  (one partition per writer) and evicted files a reader still has mapped (on
  Linux their blocks are freed when the last mapping goes).
- two puts of one partition write two temp files; the last rename wins, and
  both hold the same content.
- an eviction or a removal while another process reads is harmless: the
  reader's mapping keeps the unlinked file alive.

A scan stats every cached file (~7-10 ms per thousand here; 2 GiB of 3 MB
partitions is ~700), small next to the ingest read that precedes every put.
Methods are thread-safe: state lives in the directory, and the flock excludes
threads as well as processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
from mlmesh.logging import get_logger

from trainer_svc.core import cachefile, metrics

log = get_logger(__name__)

SUFFIX = ".part"
_TMP_SUFFIX = ".tmp"
# A temp file this old belongs to a writer that died: a live one renames within seconds.
_ORPHAN_SECONDS = 3600


@dataclass(frozen=True)
class _Entry:
    path: Path
    size: int
    last_used_ns: int


class PartitionCache:
    """Partitions under `root`, at most `max_bytes` in all; 0 disables the cache (no file is touched)."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes is {max_bytes}; expected >= 0 (0 disables the cache)")
        self.root = root
        self.max_bytes = max_bytes
        if not self.enabled:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        # A smaller bound than the last run's applies at once, not at the next put.
        with self._locked():
            held = self._evict(self._scan(), 0)
        metrics.CACHE_BYTES.set(held)
        log.info("partition cache", root=str(root), max_bytes=max_bytes, held_bytes=held)

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def path(self, dataset: str, partition_id: int) -> Path:
        name = quote(dataset, safe="")
        if name.startswith("."):  # "." and ".." are path components, not names
            name = "%2E" + name[1:]
        return self.root / name / f"{partition_id}{SUFFIX}"

    def get(self, dataset: str, partition_id: int, num_records: int) -> dict[str, np.ndarray] | None:
        """The cached columns (read-only), or None on a miss.

        A corrupt or stale file is a miss: logged, counted and removed, so the
        caller reads the partition again from ingest and puts it back. Never
        raises for I/O: an unreadable file is a miss too.
        """
        if not self.enabled:
            return None
        columns = self._read(self.path(dataset, partition_id), num_records)
        (metrics.CACHE_MISSES if columns is None else metrics.CACHE_HITS).inc()
        return columns

    def put(self, dataset: str, partition_id: int, columns: Mapping[str, np.ndarray]) -> None:
        """Cache `columns`, evicting least recently used partitions to make room.

        Never raises for I/O: a cache that cannot write (full disk, a dtype it
        cannot hold, a partition larger than the bound) only makes later
        epochs read from ingest again.
        """
        if not self.enabled:
            return
        path = self.path(dataset, partition_id)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}{_TMP_SUFFIX}")
        try:
            size = cachefile.encoded_size(columns)
            if size > self.max_bytes:
                log.info(
                    "partition larger than the cache; not cached",
                    path=str(path),
                    size=size,
                    max_bytes=self.max_bytes,
                )
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            cachefile.write(tmp, columns)
            # Stamped from the clock, not the kernel's coarse one, so close puts still order.
            now = time.time_ns()
            os.utime(tmp, ns=(now, now))
            with self._locked():
                # The file being replaced (a sibling's copy) leaves room for this one.
                entries = [e for e in self._scan() if e.path != path]
                held = self._evict(entries, size)
                os.replace(tmp, path)
            metrics.CACHE_BYTES.set(held + size)
        except (OSError, ValueError) as e:
            log.warning("could not cache partition", path=str(path), error=str(e))
        finally:
            tmp.unlink(missing_ok=True)

    def _read(self, path: Path, num_records: int) -> dict[str, np.ndarray] | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("cached partition unreadable; reading it again", path=str(path), error=str(e))
            return None
        try:
            columns = cachefile.read(fd)
            lengths = {len(c) for c in columns.values()}
            if lengths != {num_records}:
                log.warning(
                    "cached partition is stale; reading it again",
                    path=str(path),
                    records=sorted(lengths),
                    expected=num_records,
                )
                self._remove(path, fd)
                return None
            # The last use, which LRU evicts by: of this file, not whatever `path` names now.
            # A sibling's file of another owner refuses; LRU is then only less exact.
            with contextlib.suppress(OSError):
                now = time.time_ns()
                os.utime(fd, ns=(now, now))
            return columns
        except cachefile.CorruptFile as e:
            log.warning(
                "cached partition corrupt; reading it again", path=str(path), reason=e.reason, error=str(e)
            )
            metrics.CACHE_CORRUPT.labels(e.reason).inc()
            self._remove(path, fd)
            return None
        except OSError as e:  # EIO and the like: not known corrupt, so left for a later look
            log.warning("cached partition unreadable; reading it again", path=str(path), error=str(e))
            return None
        finally:
            os.close(fd)

    # ----- the directory as index ----------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
            yield

    def _scan(self) -> list[_Entry]:
        """Every cached file, its size and last use; removes orphaned temp files and old `.npz` ones."""
        entries: list[_Entry] = []
        now = time.time()
        for d in os.scandir(self.root):
            if not d.is_dir(follow_symlinks=False):
                continue
            for f in os.scandir(d.path):
                try:
                    st = f.stat(follow_symlinks=False)
                    if f.name.endswith(SUFFIX) and not f.name.startswith("."):
                        entries.append(_Entry(Path(f.path), st.st_size, st.st_mtime_ns))
                    elif self._litter(f.name, now - st.st_mtime):
                        os.unlink(f.path)
                except FileNotFoundError:  # removed by a reader that found it corrupt
                    continue
        return entries

    @staticmethod
    def _litter(name: str, age_seconds: float) -> bool:
        """A temp file whose writer died, or a file of the `.npz` format before this one."""
        return (name.endswith(_TMP_SUFFIX) and age_seconds > _ORPHAN_SECONDS) or name.endswith(".npz")

    def _evict(self, entries: list[_Entry], incoming: int) -> int:
        """Unlink least recently used entries until `incoming` more bytes fit; return the bytes left.

        The caller holds the lock.
        """
        held = sum(e.size for e in entries)
        for e in sorted(entries, key=lambda e: e.last_used_ns):
            if held + incoming <= self.max_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(e.path)
            held -= e.size
            metrics.CACHE_EVICTIONS.inc()
            log.debug("evicted cached partition", path=str(e.path), size=e.size)
        return held

    def _remove(self, path: Path, fd: int) -> None:
        """Unlink `path` if it is still the file open as `fd` (a sibling may have put a good copy since)."""
        st = os.fstat(fd)
        with contextlib.suppress(OSError):
            now = os.stat(path)
            if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                os.unlink(path)
                metrics.CACHE_BYTES.dec(st.st_size)
