"""Sequential file writes that bypass the page cache (O_DIRECT), for partition files.

Why: a partition is fsynced before its Append returns, so the page cache buys its
write nothing, and copying into fresh page-cache pages was most of an Append's
cost. Measured on our VMs (Firecracker, free page reporting on): the kernel's
copy into new page-cache pages (`copy_folio_from_iter_atomic`) ran at ~0.3 GB/s,
67 % of the server's CPU, because every fresh page the host had reclaimed faults
in on the host first; 8 MiB files written with write + fsync moved 136-205 MB/s
(2.5-4.1 s of CPU per GB), the same bytes through O_DIRECT from one reused aligned
buffer 709-1,123 MB/s (0.19-0.30 s/GB). On any machine, O_DIRECT + fsync of a large sequential file
moves what the device does, and does not evict the page cache's hot partitions
for bytes nobody is reading yet.

The cost: a partition's first read comes from the device, not from memory (the
read path maps files, and the kernel keeps O_DIRECT writes and mappings
coherent). Where the file system refuses O_DIRECT (tmpfs before Linux 6.6, some
network file systems) the writer falls back to ordinary buffered writes; the
bytes on disk are the same either way.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import threading
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np

# Offsets, lengths and buffer addresses of O_DIRECT I/O must be multiples of the device's
# logical block size (512 here); a page is safe on every device we know of.
ALIGN = 4096
STAGING_BYTES = 4 << 20  # one O_DIRECT write: large enough that per-call costs vanish


class _StagingPool:
    """Aligned (mmap, so page-aligned) buffers reused across files: a fresh buffer per file
    would fault its pages in every time, which is the cost this module avoids. It holds at
    most one buffer per thread that ever wrote at the same time as others."""

    def __init__(self) -> None:
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def take(self) -> mmap.mmap:
        with self._lock:
            if self._free:
                return self._free.pop()
        return mmap.mmap(-1, STAGING_BYTES)

    def give(self, buf: mmap.mmap) -> None:
        with self._lock:
            self._free.append(buf)


_POOL = _StagingPool()


class SequentialWriter:
    """Writes a new file front to back, then fsyncs it (`close`). Not thread-safe: one
    writer per file, one thread at a time.

    Bytes given to `write` are copied into an aligned staging buffer and written with
    O_DIRECT a buffer at a time; the last, partial buffer is written padded to ALIGN
    and the file truncated back to its true length before the fsync, so the file holds
    exactly the bytes written. On any error the caller removes the file (it is a temp
    file until renamed). `direct` says whether the page cache is being bypassed.
    """

    def __init__(self, path: Path, *, direct: bool = True) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        self.direct = False
        if direct and hasattr(os, "O_DIRECT"):
            try:
                self._fd = os.open(path, flags | os.O_DIRECT, 0o666)
                self.direct = True
            except OSError as e:
                if e.errno != errno.EINVAL:  # EINVAL: this file system does not do O_DIRECT
                    raise
        if not self.direct:
            self._fd = os.open(path, flags, 0o666)
        try:
            self._buf = _POOL.take() if self.direct else None
        except BaseException:
            os.close(self._fd)
            raise
        # Copies into the staging buffer go through NumPy, which releases the GIL while it
        # copies (a memoryview assignment holds it): the event loop goes on receiving.
        self._staging = np.frombuffer(self._buf, np.uint8) if self._buf is not None else None
        self._fill = 0  # bytes staged, not yet written
        self.size = 0  # bytes given to `write`

    def write(self, data: bytes | memoryview) -> None:
        src = np.frombuffer(data, np.uint8) if len(data) else np.empty(0, np.uint8)
        self.size += len(src)
        if self._staging is None:
            self._write_all(memoryview(src))
            return
        pos = 0
        while pos < len(src):
            take = min(STAGING_BYTES - self._fill, len(src) - pos)
            self._staging[self._fill : self._fill + take] = src[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == STAGING_BYTES:
                self._write_all(memoryview(self._staging))
                self._fill = 0

    def close(self) -> None:
        """Write what is staged, fsync, close. The file is complete and durable after this."""
        try:
            if self._staging is not None and self._fill:
                padded = -(-self._fill // ALIGN) * ALIGN
                self._staging[self._fill : padded] = 0
                self._write_all(memoryview(self._staging[:padded]))
                os.ftruncate(self._fd, self.size)
            os.fsync(self._fd)
        finally:
            self._release()

    def discard(self) -> None:
        """Close without finishing (the caller deletes the file)."""
        self._release()

    def _write_all(self, view: memoryview) -> None:
        pos = 0
        while pos < len(view):
            try:
                n = os.write(self._fd, view[pos:])
            except OSError as e:
                if not (self.direct and e.errno == errno.EINVAL):
                    raise
                # The file system took O_DIRECT at open but not this write (its alignment
                # rules differ, or a size limit cut the write short of a block): go on
                # without it; the bytes are the same, and a real error shows on retry.
                self._buffered()
                continue
            pos += n
            if pos < len(view) and self.direct:
                # A short write (a size limit or a nearly full disk): the rest is no longer
                # aligned, so it goes buffered, and that write reports the real error.
                self._buffered()

    def _buffered(self) -> None:
        flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
        fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
        self.direct = False

    def _release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._buf is not None:
            self._staging = None  # the last export of the buffer, before it is reused
            _POOL.give(self._buf)
            self._buf = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()
