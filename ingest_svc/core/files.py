"""Partition files: a small JSON header, then one contiguous raw column per feature.

Layout (all little endian)::

    b"MLMPART2" | uint32 header_len | header JSON | zero padding | column 0 | pad | column 1 ...

The header lists, per feature, its dtype, per-record shape, byte offset and
length; columns start on 64-byte boundaries so NumPy views are aligned. A
reader gets records i..j of a feature as one contiguous slice, which is what
makes streaming a partition cheap. Files are immutable once renamed into place.

Checksums: records are grouped in blocks of `block_records` (about 1 MiB of
records), and the header holds the CRC-32 of every feature's bytes in every
block. A reader verifies a block before it hands out any of its bytes
(`PartitionData.checked`), so a file damaged on disk is detected on read and
its bad bytes are never served; CRC-32 costs about as much as one memcpy.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mlmesh.checksum import crc32

from ingest_svc.core.direct import SequentialWriter
from ingest_svc.core.schema import Schema

MAGIC = b"MLMPART2"
_ALIGN = 64
_LEN = struct.Struct("<I")
BLOCK_BYTES = 1 << 20  # records per checksummed block: about this many bytes of them


class CorruptPartition(Exception):
    """A partition file disagrees with its format or with the metadata store."""


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def block_records_for(schema: Schema) -> int:
    """Records per checksummed block: about BLOCK_BYTES of them, at least one."""
    return max(1, BLOCK_BYTES // max(schema.record_bytes, 1))


def _block_crcs(pieces: Sequence[np.ndarray], block_bytes: int) -> list[int]:
    """CRC-32 of each `block_bytes` slice of the pieces' concatenated bytes (the last shorter)."""
    crcs: list[int] = []
    crc, filled = 0, 0
    for piece in pieces:
        view = memoryview(np.ascontiguousarray(piece)).cast("B") if piece.nbytes else memoryview(b"")
        pos = 0
        while pos < len(view):
            take = min(block_bytes - filled, len(view) - pos)
            crc = crc32(view[pos : pos + take], crc)
            filled += take
            pos += take
            if filled == block_bytes:
                crcs.append(crc)
                crc, filled = 0, 0
    if filled:
        crcs.append(crc)
    return crcs


def write_partition(
    path: Path, schema: Schema, columns: dict[str, Sequence[np.ndarray]], num_records: int
) -> int:
    """Write a partition to `path` (a temp name; the caller renames it) and fsync it,
    around the page cache where the file system allows (`direct.SequentialWriter`).

    `columns[name]` is a list of [k, *shape] pieces whose k add up to
    `num_records`; they are written back to back without concatenating.
    Returns the payload bytes (the sum of the records' feature bytes).
    """
    block_records = block_records_for(schema)
    entries = []
    offset = 0  # relative to the start of the data section
    for f in schema.features:
        nbytes = f.record_bytes * num_records
        pieces = [np.ascontiguousarray(p, dtype=f.np_dtype) for p in columns[f.name]]
        crcs = _block_crcs(pieces, block_records * f.record_bytes) if f.record_bytes else []
        entries.append(
            {
                "name": f.name,
                "dtype": f.dtype,
                "shape": list(f.shape),
                "offset": offset,
                "nbytes": nbytes,
                "crc32": crcs,
            }
        )
        offset = _align(offset + nbytes)
    header = json.dumps(
        {"num_records": num_records, "block_records": block_records, "features": entries}
    ).encode()
    data_start = _align(len(MAGIC) + _LEN.size + len(header))
    payload = 0
    with SequentialWriter(path) as out:
        out.write(MAGIC + _LEN.pack(len(header)) + header)
        pos = len(MAGIC) + _LEN.size + len(header)
        for f, entry in zip(schema.features, entries, strict=True):
            start = data_start + entry["offset"]
            out.write(bytes(start - pos))
            written = 0
            for piece in columns[f.name]:
                arr = np.ascontiguousarray(piece, dtype=f.np_dtype)
                if arr.nbytes:  # memoryview refuses to cast an empty view
                    out.write(memoryview(arr).cast("B"))
                written += arr.nbytes
            if written != entry["nbytes"]:
                raise ValueError(f"feature {f.name!r}: wrote {written} bytes, expected {entry['nbytes']}")
            pos = start + written
            payload += written
    return payload


@dataclass(frozen=True)
class PartitionData:
    """A partition mapped into memory. Read-only, so safe to share between threads;
    the mapping is released when the last reference goes."""

    path: Path
    schema: Schema
    num_records: int
    buffer: mmap.mmap
    offsets: dict[str, int]  # absolute offset of each feature's column in `buffer`
    block_records: int
    crcs: dict[str, list[int]]  # per feature, the CRC-32 of each block
    # Blocks verified so far (a benign race: two threads may both verify one block).
    _verified: set[int] = field(default_factory=set, compare=False, repr=False)

    def column_bytes(self, name: str, start: int, stop: int) -> memoryview:
        """Raw bytes of records [start, stop) of feature `name` (no copy, not verified)."""
        rb = self.schema.feature(name).record_bytes
        base = self.offsets[name]
        return memoryview(self.buffer)[base + start * rb : base + stop * rb]

    def verify(self, start: int, stop: int) -> None:
        """Check the checksums of every block holding records [start, stop), each block once
        per PartitionData; raises CorruptPartition naming the feature and the records."""
        if stop <= start:
            return
        b = self.block_records
        for block in range(start // b, (stop - 1) // b + 1):
            if block in self._verified:
                continue
            lo, hi = block * b, min((block + 1) * b, self.num_records)
            for f in self.schema.features:
                if not f.record_bytes:
                    continue
                if crc32(self.column_bytes(f.name, lo, hi)) != self.crcs[f.name][block]:
                    raise CorruptPartition(
                        f"{self.path}: checksum mismatch in feature {f.name!r}, records {lo}-{hi - 1} "
                        "(the file was damaged on disk)"
                    )
            self._verified.add(block)

    def checked(self, name: str, start: int, stop: int) -> memoryview:
        """`column_bytes` after verifying the blocks it covers."""
        self.verify(start, stop)
        return self.column_bytes(name, start, stop)

    def column(self, name: str) -> np.ndarray:
        """A feature's whole column, verified."""
        f = self.schema.feature(name)
        view = self.checked(name, 0, self.num_records)
        return np.frombuffer(view, dtype=f.np_dtype).reshape((self.num_records, *f.shape))


def read_partition(path: Path, schema: Schema) -> PartitionData:
    """Load and check a partition file's header against the dataset schema (the
    records' checksums are verified as they are read: `PartitionData.verify`).

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
        if buf[:7] == MAGIC[:7]:
            raise CorruptPartition(
                f"{path} is in partition format {buf[7:8].decode(errors='replace')!r}; "
                f"this build reads {MAGIC[7:8].decode()!r} (re-ingest the dataset)"
            )
        raise CorruptPartition(f"{path} is not a partition file (bad magic)")
    (hlen,) = _LEN.unpack_from(buf, len(MAGIC))
    try:
        header = json.loads(buf[head : head + hlen])
        num_records = int(header["num_records"])
        block_records = int(header["block_records"])
        entries = header["features"]
        crcs = {e["name"]: [int(c) for c in e["crc32"]] for e in entries}
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptPartition(f"{path} has an unreadable header: {e}") from None
    if block_records < 1 or num_records < 0:
        raise CorruptPartition(f"{path} has an invalid header (block_records={block_records})")
    data_start = _align(head + hlen)
    got = [(e["name"], e["dtype"], tuple(e["shape"])) for e in entries]
    want = [(f.name, f.dtype, f.shape) for f in schema.features]
    if got != want:
        raise CorruptPartition(f"{path} holds features {got} but the dataset schema is {want}")
    blocks = -(-num_records // block_records)
    offsets: dict[str, int] = {}
    for f, e in zip(schema.features, entries, strict=True):
        start = data_start + int(e["offset"])
        if int(e["nbytes"]) != f.record_bytes * num_records or start + int(e["nbytes"]) > len(buf):
            raise CorruptPartition(f"{path}: column {f.name!r} is truncated or has the wrong length")
        if f.record_bytes and len(crcs[f.name]) != blocks:
            raise CorruptPartition(
                f"{path}: column {f.name!r} has {len(crcs[f.name])} checksums for {blocks} blocks"
            )
        offsets[f.name] = start
    return PartitionData(path, schema, num_records, buf, offsets, block_records, crcs)
