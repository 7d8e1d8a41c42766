"""Partition files: a small JSON header, then one contiguous raw column per feature.

Layout (all little endian)::

    b"MLMPART1" | uint32 header_len | header JSON | zero padding | column 0 | pad | column 1 ...

The header lists, per feature, its dtype, per-record shape, byte offset and
length; columns start on 64-byte boundaries so NumPy views are aligned. A
reader gets records i..j of a feature as one contiguous slice, which is what
makes streaming a partition cheap. Files are immutable once renamed into place.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ingest_svc.core.schema import Schema

MAGIC = b"MLMPART1"
_ALIGN = 64
_LEN = struct.Struct("<I")


class CorruptPartition(Exception):
    """A partition file disagrees with its format or with the metadata store."""


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def write_partition(
    path: Path, schema: Schema, columns: dict[str, Sequence[np.ndarray]], num_records: int
) -> int:
    """Write a partition to `path` (a temp name; the caller renames it) and fsync it.

    `columns[name]` is a list of [k, *shape] pieces whose k add up to
    `num_records`; they are written back to back without concatenating.
    Returns the payload bytes (the sum of the records' feature bytes).
    """
    entries = []
    offset = 0  # relative to the start of the data section
    for f in schema.features:
        nbytes = f.record_bytes * num_records
        entries.append(
            {"name": f.name, "dtype": f.dtype, "shape": list(f.shape), "offset": offset, "nbytes": nbytes}
        )
        offset = _align(offset + nbytes)
    header = json.dumps({"num_records": num_records, "features": entries}).encode()
    data_start = _align(len(MAGIC) + _LEN.size + len(header))
    payload = 0
    with open(path, "wb") as fh:
        fh.write(MAGIC + _LEN.pack(len(header)) + header)
        pos = len(MAGIC) + _LEN.size + len(header)
        for f, entry in zip(schema.features, entries, strict=True):
            start = data_start + entry["offset"]
            fh.write(b"\0" * (start - pos))
            written = 0
            for piece in columns[f.name]:
                arr = np.ascontiguousarray(piece, dtype=f.np_dtype)
                if arr.nbytes:  # memoryview refuses to cast an empty view
                    fh.write(memoryview(arr).cast("B"))
                written += arr.nbytes
            if written != entry["nbytes"]:
                raise ValueError(f"feature {f.name!r}: wrote {written} bytes, expected {entry['nbytes']}")
            pos = start + written
            payload += written
        fh.flush()
        os.fsync(fh.fileno())
    return payload


@dataclass(frozen=True)
class PartitionData:
    """A partition mapped into memory. Read-only, so safe to share between threads;
    the mapping is released when the last reference goes."""

    schema: Schema
    num_records: int
    buffer: mmap.mmap
    offsets: dict[str, int]  # absolute offset of each feature's column in `buffer`

    def column_bytes(self, name: str, start: int, stop: int) -> memoryview:
        """Raw bytes of records [start, stop) of feature `name` (no copy)."""
        rb = self.schema.feature(name).record_bytes
        base = self.offsets[name]
        return memoryview(self.buffer)[base + start * rb : base + stop * rb]

    def column(self, name: str) -> np.ndarray:
        f = self.schema.feature(name)
        view = self.column_bytes(name, 0, self.num_records)
        return np.frombuffer(view, dtype=f.np_dtype).reshape((self.num_records, *f.shape))


def read_partition(path: Path, schema: Schema) -> PartitionData:
    """Load and check a partition file against the dataset schema.

    Raises FileNotFoundError if it is missing and CorruptPartition if it does
    not match its own header or the schema.
    """
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise CorruptPartition(f"{path} is empty")
        # Mapped, not read: pages come in as batches are streamed, concurrent readers
        # share the page cache, and a 1 GiB partition does not cost 1 GiB per reader.
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    buf.madvise(mmap.MADV_SEQUENTIAL)
    head = len(MAGIC) + _LEN.size
    if len(buf) < head or buf[: len(MAGIC)] != MAGIC:
        raise CorruptPartition(f"{path} is not a partition file (bad magic)")
    (hlen,) = _LEN.unpack_from(buf, len(MAGIC))
    try:
        header = json.loads(buf[head : head + hlen])
        num_records = int(header["num_records"])
        entries = header["features"]
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptPartition(f"{path} has an unreadable header: {e}") from None
    data_start = _align(head + hlen)
    got = [(e["name"], e["dtype"], tuple(e["shape"])) for e in entries]
    want = [(f.name, f.dtype, f.shape) for f in schema.features]
    if got != want:
        raise CorruptPartition(f"{path} holds features {got} but the dataset schema is {want}")
    offsets: dict[str, int] = {}
    for f, e in zip(schema.features, entries, strict=True):
        start = data_start + int(e["offset"])
        if int(e["nbytes"]) != f.record_bytes * num_records or start + int(e["nbytes"]) > len(buf):
            raise CorruptPartition(f"{path}: column {f.name!r} is truncated or has the wrong length")
        offsets[f.name] = start
    return PartitionData(schema, num_records, buf, offsets)
