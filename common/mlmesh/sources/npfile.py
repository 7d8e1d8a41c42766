"""NumPy files: `.npy` (one column) and `.npz` (one column per array), read in slices.

Neither is loaded whole: an .npy is memory-mapped, and the members of an .npz
(a zip, maybe compressed) are read record by record from the zip stream.
Pickled object arrays are refused.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

from mlmesh.sources.base import BATCH_BYTES, Source, records_per_batch
from mlmesh.sources.schema import Batch, Schema, SchemaError

DEFAULT_NPY_COLUMN = "x"


class NpySource(Source):
    """One .npy array as one column: the declared schema's only column, else `x`."""

    def __init__(self, path: Path, schema: Schema | None = None) -> None:
        self.path = path
        try:
            self._array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise SchemaError(f"{path}: not a readable .npy file: {e}") from None
        if self._array.ndim == 0:
            raise SchemaError(f"{path}: holds a scalar; expected an array with one entry per record")
        if schema is not None and len(schema.columns) != 1:
            raise SchemaError(f"{path}: an .npy file is one column but the schema has {schema.names}")
        name = schema.names[0] if schema is not None else DEFAULT_NPY_COLUMN
        self.schema = schema or Schema.infer({name: self._array})
        self.total = len(self._array)

    def batches(self, target_bytes: int = BATCH_BYTES) -> Iterator[Batch]:
        name = self.schema.names[0]
        size = records_per_batch(self.schema, target_bytes)
        for start in range(0, len(self._array), size):
            # np.array: read the mapped pages now, so the batch does not pin the file's mapping.
            piece = np.array(self._array[start : start + size])
            yield self.schema.conform({name: piece}, start, str(self.path))


class NpzSource(Source):
    """Every array of an .npz as a column (its first axis counts records; all agree).

    A declared schema may name a subset of the arrays; the others are skipped.
    """

    def __init__(self, path: Path, schema: Schema | None = None) -> None:
        self.path = path
        try:
            with zipfile.ZipFile(path) as zf:
                members = {_key(n): n for n in zf.namelist() if n.endswith(".npy")}
                headers = {k: _header(zf, n, path) for k, n in members.items()}
        except (OSError, zipfile.BadZipFile) as e:
            raise SchemaError(f"{path}: not a readable .npz file: {e}") from None
        if not headers:
            raise SchemaError(f"{path}: holds no arrays")
        if schema is None:
            schema = Schema.infer({k: np.empty((0, *shape[1:]), dt) for k, (shape, dt) in headers.items()})
        missing = [n for n in schema.names if n not in headers]
        if missing:
            raise SchemaError(f"{path}: has no array(s) {missing} (it holds {sorted(headers)})")
        self._members = {n: members[n] for n in schema.names}
        self._headers = {n: headers[n] for n in schema.names}
        counts = {n: shape[0] for n, (shape, _) in self._headers.items()}
        if len(set(counts.values())) != 1:
            raise SchemaError(f"{path}: arrays have different record counts: {counts}")
        self.schema = schema
        self.total = next(iter(counts.values()))

    def batches(self, target_bytes: int = BATCH_BYTES) -> Iterator[Batch]:
        size = records_per_batch(self.schema, target_bytes)
        assert self.total is not None
        with zipfile.ZipFile(self.path) as zf:
            streams = {n: _open_data(zf, m) for n, m in self._members.items()}
            try:
                for start in range(0, self.total, size):
                    k = min(size, self.total - start)
                    batch = {
                        n: _read_rows(fh, *self._headers[n], k, self.path, n) for n, fh in streams.items()
                    }
                    yield self.schema.conform(batch, start, str(self.path))
            finally:
                for fh in streams.values():
                    fh.close()


def _key(member: str) -> str:
    return member[: -len(".npy")]


def _read_header(fh: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fh)
    raise ValueError(f"unsupported .npy format version {version}")


def _header(zf: zipfile.ZipFile, member: str, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    with zf.open(member) as fh:
        try:
            shape, fortran, dtype = _read_header(fh)
        except ValueError as e:
            raise SchemaError(f"{path}: array {_key(member)!r}: {e}") from None
    if dtype.hasobject:
        raise SchemaError(
            f"{path}: array {_key(member)!r} holds Python objects; only numeric arrays can be ingested"
        )
    if not shape:
        raise SchemaError(f"{path}: array {_key(member)!r} is a scalar; expected one entry per record")
    if fortran and len(shape) > 1:
        raise SchemaError(
            f"{path}: array {_key(member)!r} is stored in Fortran order, which cannot be read record by "
            "record; save it with np.ascontiguousarray first"
        )
    return tuple(shape), dtype


def _open_data(zf: zipfile.ZipFile, member: str) -> IO[bytes]:
    fh = zf.open(member)
    _read_header(fh)  # leaves the stream at the first record
    return fh


def _read_rows(
    fh: IO[bytes], shape: tuple[int, ...], dtype: np.dtype, k: int, path: Path, name: str
) -> np.ndarray:
    nbytes = k * dtype.itemsize * math.prod(shape[1:])
    data = fh.read(nbytes)
    if len(data) != nbytes:
        raise SchemaError(f"{path}: array {name!r} is truncated")
    return np.frombuffer(data, dtype=dtype).reshape((k, *shape[1:]))
