"""The on-disk format of one cached partition: raw columns behind a checksummed header.

    0   8s  magic b"MLMPART1"
    8   Q   file size in bytes (a shorter file is truncated)
    16  I   header length
    20  I   CRC-32 of every byte after this 24-byte prefix (header, padding, columns)
    24      header: UTF-8 JSON {"columns": [{"name", "dtype", "shape", "offset", "nbytes"}, ...]}
            then each column's C-order bytes at a 64-byte aligned offset

Raw bytes rather than an `.npz` so a hit is an mmap and a checksum, with no
copy: the arrays are read-only views of the page cache, shared by every worker
on the host that reads the same partition. CRC-32 (`mlmesh.checksum`, ISA-L's:
the values of zlib's, >20 GB/s) because the threat is bit rot and torn files, not
an adversary (blake2b ~1 GB/s, sha256 ~1.6 GB/s here).
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mlmesh.checksum import crc32

MAGIC = b"MLMPART1"
_PREFIX = struct.Struct("<8sQII")
_ALIGN = 64
_KINDS = "biufc"  # what ingest can carry (mlmesh.tensor); nothing that needs pickling


class CorruptFile(Exception):
    """A cached file that must not be served; `reason` labels the metric."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _align(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


@dataclass
class _Column:
    name: str
    dtype: str
    shape: list[int]
    nbytes: int
    offset: int = 0


def _layout(columns: Mapping[str, np.ndarray]) -> tuple[bytes, list[tuple[_Column, np.ndarray]], int]:
    """The header, each column with its bytes (flat uint8, C order), and the file size."""
    cols: list[tuple[_Column, np.ndarray]] = []
    for name, col in columns.items():
        if col.dtype.kind not in _KINDS:
            raise ValueError(
                f"column {name!r} has dtype {col.dtype} but the cache holds only kinds {_KINDS!r}"
            )
        # A uint8 view because the buffer protocol refuses some dtypes; CRC and write want bytes.
        data = np.ascontiguousarray(col).reshape(-1).view(np.uint8)
        cols.append((_Column(name, col.dtype.str, list(col.shape), data.nbytes), data))
    # The offsets depend on the header's length, which depends on the offsets' digits:
    # lay out again until the length is stable (it only grows, so this ends in a pass or two).
    header = b""
    while True:
        end = _PREFIX.size + len(header)
        for c, _data in cols:
            c.offset = _align(end)
            end = c.offset + c.nbytes
        laid_out = json.dumps({"columns": [asdict(c) for c, _ in cols]}, separators=(",", ":")).encode()
        if len(laid_out) == len(header):
            return laid_out, cols, end
        header = laid_out


def encoded_size(columns: Mapping[str, np.ndarray]) -> int:
    return _layout(columns)[2]


def write(path: Path, columns: Mapping[str, np.ndarray]) -> int:
    """Write `columns` to the new file `path` and return its size.

    Not fsynced: a file torn by a crash fails its size or checksum check and
    is read again, which is all a cache owes. ValueError for a dtype the
    format does not hold; FileExistsError if `path` exists.
    """
    header, cols, size = _layout(columns)
    parts: list[bytes | np.ndarray] = [header]
    pos = _PREFIX.size + len(header)
    for c, data in cols:
        parts += [bytes(c.offset - pos), data]
        pos = c.offset + c.nbytes
    crc = 0
    for part in parts:
        crc = crc32(part, crc)
    with open(path, "xb") as f:
        f.write(_PREFIX.pack(MAGIC, size, len(header), crc))
        for part in parts:
            f.write(part)
    return size


def read(fd: int) -> dict[str, np.ndarray]:
    """The columns of the open file `fd`, as read-only views of an mmap of it.

    The whole file is checksummed first, so nothing corrupt is returned;
    CorruptFile otherwise. The mapping outlives `fd` (close it when done) and
    an unlink of the file: it lives as long as the arrays.
    """
    size = os.fstat(fd).st_size
    if size < _PREFIX.size:
        raise CorruptFile("truncated", f"file has {size} bytes, less than the {_PREFIX.size}-byte prefix")
    prefix = os.pread(fd, _PREFIX.size, 0)
    magic, expected, header_len, crc = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise CorruptFile("format", f"magic is {magic!r}, expected {MAGIC!r}")
    if size != expected:
        raise CorruptFile("truncated", f"file has {size} bytes but its prefix says {expected}")
    mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    with memoryview(mm) as view:
        actual = crc32(view[_PREFIX.size :])
        if actual != crc:
            raise CorruptFile("checksum", f"CRC-32 is {actual:#010x}, expected {crc:#010x}")
        try:
            specs = json.loads(bytes(view[_PREFIX.size : _PREFIX.size + header_len]))["columns"]
            columns = {s["name"]: _view(mm, s) for s in specs}
        except (ValueError, KeyError, TypeError) as e:  # checksummed yet wrong: a writer's bug
            raise CorruptFile("format", f"header unreadable: {e}") from e
    return columns


def _view(mm: mmap.mmap, spec: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(spec["dtype"])
    shape = [int(d) for d in spec["shape"]]
    count = int(np.prod(shape, dtype=np.int64))
    if count * dtype.itemsize != spec["nbytes"]:
        raise ValueError(
            f"column {spec['name']!r} is {dtype}{shape}, {count * dtype.itemsize} bytes, "
            f"but the header says {spec['nbytes']}"
        )
    return np.frombuffer(mm, dtype, count, int(spec["offset"])).reshape(shape)
